import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { cp, mkdir, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { tempDir } from "./_test-helpers.ts";
import { bundleEntry, findEntry, relocatePaths } from "./bundle.ts";

async function writeTree(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

async function buildError(promise: Promise<unknown>): Promise<ForgeError> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ForgeError);
  const forgeErr = err as ForgeError;
  expect(forgeErr.code).toBe(ErrorCode.BuildFailed);
  expect(forgeErr.status).toBe(400);
  expect(forgeErr.hint).toBeTruthy();
  return forgeErr;
}

const APP = {
  "index.ts": `import { greet } from "./lib/greet.ts";
import pkg from "./data.json";
export default { fetch(req: Request): Response { return new Response(greet(new URL(req.url).searchParams.get("name") ?? "world") + pkg.suffix); } };
`,
  "lib/greet.ts": `export const greet = (name: string): string => \`Hello, \${name}\`;\n`,
  "data.json": `{ "suffix": "!" }`,
};

for (const trusted of [false, true]) {
  describe(`bundleEntry (${trusted ? "trusted, in-process" : "untrusted, child process"})`, () => {
    test("bundles local imports into one file that runs", async () => {
      await using tmp = await tempDir();
      const dir = join(tmp.path, "fn");
      await writeTree(dir, APP);
      const outFile = join(tmp.path, "out", "bundle.js");
      const result = await bundleEntry(dir, "index.ts", outFile, { trusted });

      const bytes = await Bun.file(outFile).bytes();
      expect(result.bytes).toBe(bytes.byteLength);
      expect(result.digest).toBe(new Bun.CryptoHasher("sha256").update(bytes).digest("hex"));
      expect(await readdir(join(tmp.path, "out"))).toEqual(["bundle.js"]); // no work files left behind

      const mod = (await import(outFile)) as { default: { fetch(req: Request): Response } };
      const res = mod.default.fetch(new Request("http://x/?name=forge"));
      expect(await res.text()).toBe("Hello, forge!");
    });

    test("a syntax error is BuildFailed with the place in the message", async () => {
      await using tmp = await tempDir();
      await writeTree(tmp.path, { "index.ts": "export default {\n  fetch( { return 1 }\n}\n" });
      const err = await buildError(bundleEntry(tmp.path, "index.ts", join(tmp.path, "out.js"), { trusted }));
      expect(err.message).toContain("index.ts:2:");
      expect(existsSync(join(tmp.path, "out.js"))).toBe(false);
    });

    test("an import that does not resolve is BuildFailed with the install hint", async () => {
      await using tmp = await tempDir();
      await writeTree(tmp.path, { "index.ts": 'import x from "forge-test-not-installed";\nexport default x;\n' });
      const err = await buildError(bundleEntry(tmp.path, "index.ts", join(tmp.path, "out.js"), { trusted }));
      expect(err.message).toContain("forge-test-not-installed");
      expect(err.hint).toContain("npm install");
    });

    test("a missing entry is BuildFailed", async () => {
      await using tmp = await tempDir();
      const err = await buildError(bundleEntry(tmp.path, "index.ts", join(tmp.path, "out.js"), { trusted }));
      expect(err.message).toBe("entry index.ts not found in the function folder");
      expect(err.hint).toContain('"entry"');
    });
  });
}

describe("bundleEntry on untrusted source", () => {
  test("never runs macros", async () => {
    await using tmp = await tempDir();
    const marker = join(tmp.path, "macro-ran");
    await writeTree(join(tmp.path, "fn"), {
      "m.ts": `import { writeFileSync } from "node:fs";\nexport function boom(): string { writeFileSync(${JSON.stringify(marker)}, "yes"); return "x"; }\n`,
      "index.ts": `import { boom } from "./m.ts" with { type: "macro" };\nexport default () => boom();\n`,
    });
    const err = await buildError(bundleEntry(join(tmp.path, "fn"), "index.ts", join(tmp.path, "out.js")));
    expect(err.message).toContain("Macros are disabled");
    expect(existsSync(marker)).toBe(false);
  });

  test("refuses to inline a file from outside the function folder", async () => {
    await using tmp = await tempDir();
    const secret = join(tmp.path, "secret.txt");
    await writeFile(secret, "server secret");
    await writeTree(join(tmp.path, "fn"), {
      "index.ts": `import s from ${JSON.stringify(secret)} with { type: "text" };\nexport default () => s;\n`,
    });
    const outFile = join(tmp.path, "out.js");
    const err = await buildError(bundleEntry(join(tmp.path, "fn"), "index.ts", outFile));
    expect(err.message).toContain("outside the function folder");
    expect(existsSync(outFile)).toBe(false);
  });

  test("bundles packages from the folder's own node_modules", async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "fn");
    await writeTree(dir, {
      "node_modules/tiny/package.json": '{"name":"tiny","main":"index.js"}',
      "node_modules/tiny/index.js": "module.exports = { twice: (n) => n * 2 };",
      "index.ts": 'import { twice } from "tiny";\nexport default () => twice(21);\n',
    });
    const outFile = join(tmp.path, "out.js");
    await bundleEntry(dir, "index.ts", outFile);
    const mod = (await import(outFile)) as { default: () => number };
    expect(mod.default()).toBe(42);
  });

  test("the same source gives the same digest", async () => {
    await using tmp = await tempDir();
    await writeTree(join(tmp.path, "fn"), APP);
    const a = await bundleEntry(join(tmp.path, "fn"), "index.ts", join(tmp.path, "a.js"));
    const b = await bundleEntry(join(tmp.path, "fn"), "index.ts", join(tmp.path, "b.js"));
    expect(a.digest).toBe(b.digest);
  });
});

describe("findEntry", () => {
  test("takes the configured entry when it exists", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "", "src/server.ts": "" });
    expect(await findEntry(tmp.path, "src/server.ts")).toBe("src/server.ts");
  });

  test("a configured entry that is missing or leaves the folder is BuildFailed", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "" });
    for (const entry of ["main.ts", "../index.ts", "/etc/hostname"]) {
      const err = await buildError(findEntry(tmp.path, entry));
      expect(err.message).toBe(`entry ${entry} not found in the function folder`);
    }
  });

  test("picks the first candidate that exists", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "main.ts": "", "src/index.ts": "", "index.mjs": "" });
    expect(await findEntry(tmp.path)).toBe("index.mjs");
    await writeTree(tmp.path, { "index.ts": "" });
    expect(await findEntry(tmp.path)).toBe("index.ts");
  });

  test("no candidate is BuildFailed naming index.ts", async () => {
    await using tmp = await tempDir();
    await mkdir(join(tmp.path, "index.ts")); // a folder is not an entry
    const err = await buildError(findEntry(tmp.path));
    expect(err.message).toBe("entry index.ts not found in the function folder");
  });
});

describe("findEntry hints", () => {
  test("the module of a forge.json handler names the entry, with .ts .js .mjs or .cjs", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "", "src/api.cjs": "", "lambda.mjs": "" });
    expect(await findEntry(tmp.path, { handler: "src/api.main" })).toBe("src/api.cjs");
    expect(await findEntry(tmp.path, { handler: "lambda.handler" })).toBe("lambda.mjs");
    // entry wins over handler
    expect(await findEntry(tmp.path, { entry: "index.ts", handler: "src/api.main" })).toBe("index.ts");
    const err = await buildError(findEntry(tmp.path, { handler: "nope.handler" }));
    expect(err.message).toContain("nope.ts");
    expect(err.hint).toContain("handler");
  });

  test("package.json main comes before the candidates, when it is a file of the folder", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "", "lib/app.js": "", "package.json": '{"main": "./lib/app.js"}' });
    expect(await findEntry(tmp.path)).toBe("lib/app.js");
    await writeTree(tmp.path, { "package.json": '{"main": "../outside.js"}' });
    expect(await findEntry(tmp.path)).toBe("index.ts");
    await writeTree(tmp.path, { "package.json": '{"main": "missing.js"}' });
    expect(await findEntry(tmp.path)).toBe("index.ts");
  });

  test("index.cjs is a candidate", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.cjs": "", "main.ts": "" });
    expect(await findEntry(tmp.path)).toBe("index.cjs");
  });
});

/** A function whose modules read their own place four ways; copied elsewhere, it must see the copy. */
const PLACES = {
  "index.cjs": `const fs = require("fs");
const path = require("path");
const lib = require("./lib/where.cjs");
const esm = require("./sub/meta.mjs");
exports.handler = async () => ({
  template: fs.readFileSync(path.join(__dirname, "template.html"), "utf8"),
  dirname: __dirname,
  filename: __filename,
  lib: lib.where(),
  esm: esm.meta(),
});
`,
  "lib/where.cjs": `module.exports = { where: () => ({ dirname: __dirname, filename: __filename, text: require("fs").readFileSync(__dirname + "/data.txt", "utf8") }) };\n`,
  "lib/data.txt": "lib data",
  "sub/meta.mjs": `export const meta = () => ({ dir: import.meta.dir, dirname: import.meta.dirname, path: import.meta.path, file: import.meta.file, url: import.meta.url });\n`,
  "template.html": "<h1>hello</h1>",
};

/** Modules whose strings, templates, regexes and object keys name import.meta and __dirname (two ES modules read __dirname: Bun declares it at the top level twice). */
const LITERALS = {
  "index.mjs": `import { msg, here, pattern } from "./lib/b.js";
import x from "./lib/x.mjs";
const cjs = require("./lib/a.cjs");
// __dirname in a comment, and import.meta.url too
const o = { __dirname: 1, "__filename": 2 };
export default () => ({ msg, here, pattern, root: __dirname, keys: Object.keys(o), shorthand: { __dirname }, s: "see __dirname", x: x(), cjs: cjs() });
`,
  "lib/b.js": `export const msg = "needs import.meta.url to be a 'file:' URL";
export const here = import.meta.dir;
export const pattern = String(/import\\.meta\\.dir|__dirname/);
`,
  "lib/x.mjs": "export default () => ({ dir: __dirname, file: __filename, obj: { __filename: 2 }, short: { __filename }, s: `${__dirname} and __dirname text` });\n",
  "lib/a.cjs": `module.exports = () => ({ dir: __dirname, cfg: { __dirname: "keyed" }, s: "__dirname is " + __dirname });\n`,
};

for (const trusted of [false, true]) {
  describe(`bundle paths (${trusted ? "trusted" : "untrusted"})`, () => {
    test("__dirname, __filename and import.meta of every module name the copy the bundle sits in", async () => {
      await using tmp = await tempDir();
      const dir = join(tmp.path, "src");
      await writeTree(dir, PLACES);
      const copy = join(tmp.path, "elsewhere");
      await writeTree(copy, PLACES);
      const bundle = join(copy, ".forge-bundle.mjs");
      await bundleEntry(dir, "index.cjs", bundle, { trusted });
      const code = await Bun.file(bundle).text();
      expect(code).not.toContain(dir); // no baked path of the source folder is left

      const mod = (await import(bundle)) as { handler: () => Promise<Record<string, unknown>> };
      expect(await mod.handler()).toEqual({
        template: "<h1>hello</h1>",
        dirname: copy,
        filename: join(copy, "index.cjs"),
        lib: { dirname: join(copy, "lib"), filename: join(copy, "lib/where.cjs"), text: "lib data" },
        esm: {
          dir: join(copy, "sub"),
          dirname: join(copy, "sub"),
          path: join(copy, "sub/meta.mjs"),
          file: "meta.mjs",
          url: Bun.pathToFileURL(join(copy, "sub/meta.mjs")).href,
        },
      });
    });

    test("text that mentions import.meta or __dirname, and property names, stay as written", async () => {
      await using tmp = await tempDir();
      const dir = join(tmp.path, "src");
      await writeTree(dir, LITERALS);
      const copy = join(tmp.path, "elsewhere");
      await writeTree(copy, LITERALS);
      const bundle = join(copy, ".forge-bundle.mjs");
      await bundleEntry(dir, "index.mjs", bundle, { trusted });
      const mod = (await import(bundle)) as { default: () => Record<string, unknown> };
      expect(mod.default()).toEqual({
        msg: "needs import.meta.url to be a 'file:' URL",
        here: join(copy, "lib"),
        pattern: "/import\\.meta\\.dir|__dirname/",
        root: copy,
        keys: ["__dirname", "__filename"],
        shorthand: { __dirname: copy },
        s: "see __dirname",
        x: { dir: join(copy, "lib"), file: join(copy, "lib/x.mjs"), obj: { __filename: 2 }, short: { __filename: join(copy, "lib/x.mjs") }, s: `${join(copy, "lib")} and __dirname text` },
        cjs: { dir: join(copy, "lib"), cfg: { __dirname: "keyed" }, s: `__dirname is ${join(copy, "lib")}` },
      });
    });

    test("packages holding native addons stay out of the bundle and load from node_modules beside it", async () => {
      await using tmp = await tempDir();
      const dir = join(tmp.path, "src");
      await writeTree(dir, {
        "index.ts": `import bufferutil from "bufferutil";
export default () => { const b = Buffer.from([1, 2, 3, 4]); bufferutil.mask(b, Buffer.from([1, 1, 1, 1]), b, 0, 4); return [...b]; };
`,
      });
      // the real package (a devDependency of forge): node-gyp-build loads a prebuilt .node
      for (const name of ["bufferutil", "node-gyp-build"]) {
        await cp(join(import.meta.dir, "../../node_modules", name), join(dir, "node_modules", name), { recursive: true });
      }
      const bundle = join(dir, ".forge-bundle.mjs");
      const result = await bundleEntry(dir, "index.ts", bundle, { trusted });
      expect(result.external).toEqual(["bufferutil"]);
      const code = await Bun.file(bundle).text();
      expect(code).not.toContain("node-gyp-build"); // not bundled: its dynamic lookup stays in the package
      const mod = (await import(bundle)) as { default: () => number[] };
      expect(mod.default()).toEqual([0, 3, 2, 5]);
    });
  });
}

describe("relocatePaths", () => {
  test("leaves paths outside the folder and other code alone", async () => {
    const code = [
      "// @bun",
      "",
      "// ../other/x.cjs",
      'var __dirname = "/elsewhere/other", __filename = "/elsewhere/other/x.cjs";',
      'console.log(import.meta.require, import.meta.main, "__dirname");',
    ].join("\n");
    expect(await relocatePaths(code, "/abs/fn", "/abs/fn")).toBe(code);
  });

  test("the first module, right below the // @bun pragma, is found too", async () => {
    const code = ["// @bun", "// sub/note.ts", "var note = () => import.meta.dir;", "", "// index.ts", "var x = import.meta.dir;"].join("\n");
    const root = join(import.meta.dir, "__fixture_root__");
    // the paths must exist: use this very folder as the root, with files that are here
    const here = import.meta.dir;
    const real = ["// @bun", "// bundle.ts", "var a = import.meta.path;", "", "// native.ts", "var b = import.meta.file;"].join("\n");
    expect(await relocatePaths(real, here, here)).toBe(["// @bun", "// bundle.ts", 'var a = (import.meta.dirname + "/bundle.ts");', "", "// native.ts", 'var b = "native.ts";'].join("\n"));
    expect(await relocatePaths(code, root, root)).toBe(code); // files that do not exist are not modules of the folder
  });

  test("a baked root path becomes import.meta.dirname (Bun and Node both have it)", async () => {
    const code = 'var __dirname = "/abs/fn";\nvar __filename = "/abs/fn/deep/x.js";';
    expect(await relocatePaths(code, "/abs/fn", "/")).toBe('var __dirname = import.meta.dirname;\nvar __filename = (import.meta.dirname + "/deep/x.js");');
  });

  test("only code is rewritten: strings, templates, regexes, comments and property names are not", async () => {
    const here = import.meta.dir;
    const code = [
      "// @bun",
      "// native.ts",
      'var __dirname = "' + here + '", __filename = "' + here + '/native.ts";',
      'var s = "import.meta.url and __dirname", t = `${__dirname} import.meta.dir`, r = /import.meta.dir|__dirname/g;',
      "/* import.meta.url */ var o = { __dirname: 1, __filename }, p = o.__dirname ?? o?.__filename, q = { get __dirname() { return 1; } };",
      "",
      "// bundle.ts",
      'var __dirname = "' + here + '";',
      "var u = import.meta.url, v = x.import.meta.url;",
    ].join("\n");
    expect(await relocatePaths(code, here, here)).toBe(
      [
        "// @bun",
        "// native.ts",
        'var __dirname$forge1 = import.meta.dirname, __filename$forge1 = (import.meta.dirname + "/native.ts");',
        'var s = "import.meta.url and __dirname", t = `${__dirname$forge1} import.meta.dir`, r = /import.meta.dir|__dirname/g;',
        "/* import.meta.url */ var o = { __dirname: 1, __filename: __filename$forge1 }, p = o.__dirname ?? o?.__filename, q = { get __dirname() { return 1; } };",
        "",
        "// bundle.ts",
        "var __dirname$forge2 = import.meta.dirname;",
        'var u = new URL("bundle.ts", import.meta.url).href, v = x.import.meta.url;',
      ].join("\n"),
    );
  });

  test("a bundle that does not tokenize is BuildFailed", async () => {
    await buildError(relocatePaths("var s = 'unterminated", "/abs/fn", "/abs/fn"));
  });
});
