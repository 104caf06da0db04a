import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { tempDir } from "./_test-helpers.ts";
import { bundleEntry, findEntry } from "./bundle.ts";

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
    expect(findEntry(tmp.path, "src/server.ts")).toBe("src/server.ts");
  });

  test("a configured entry that is missing or leaves the folder is BuildFailed", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "" });
    for (const entry of ["main.ts", "../index.ts", "/etc/hostname"]) {
      const err = await buildError(Promise.resolve().then(() => findEntry(tmp.path, entry)));
      expect(err.message).toBe(`entry ${entry} not found in the function folder`);
    }
  });

  test("picks the first candidate that exists", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "main.ts": "", "src/index.ts": "", "index.mjs": "" });
    expect(findEntry(tmp.path)).toBe("index.mjs");
    await writeTree(tmp.path, { "index.ts": "" });
    expect(findEntry(tmp.path)).toBe("index.ts");
  });

  test("no candidate is BuildFailed naming index.ts", async () => {
    await using tmp = await tempDir();
    await mkdir(join(tmp.path, "index.ts")); // a folder is not an entry
    const err = await buildError(Promise.resolve().then(() => findEntry(tmp.path)));
    expect(err.message).toBe("entry index.ts not found in the function folder");
  });
});
