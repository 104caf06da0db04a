import { describe, expect, test } from "bun:test";
import { mkdir, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { tempDir } from "./_test-helpers.ts";
import { nativePackages, packageClosure, packageMain } from "./native.ts";
import { packDir } from "./pack.ts";
import { safeUnpack } from "./unpack.ts";

async function writeTree(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

describe("native packages", () => {
  test("finds the packages holding .node files, scoped ones too, not their nested packages' addons", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "node_modules/plain/package.json": '{"name":"plain"}',
      "node_modules/addon/package.json": '{"name":"addon"}',
      "node_modules/addon/prebuilds/linux-x64/addon.node": "ELF",
      "node_modules/@s/deep/package.json": '{"name":"@s/deep"}',
      "node_modules/@s/deep/build/Release/deep.node": "ELF",
      "node_modules/wrapper/package.json": '{"name":"wrapper"}',
      "node_modules/wrapper/node_modules/inner/build/inner.node": "ELF",
    });
    expect(await nativePackages(tmp.path)).toEqual(["@s/deep", "addon"]);
  });

  test("no node_modules, no native packages", async () => {
    await using tmp = await tempDir();
    expect(await nativePackages(tmp.path)).toEqual([]);
  });

  test("the closure follows dependencies as Node resolves them, nested first", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "node_modules/addon/package.json": '{"name":"addon","dependencies":{"gyp":"^4","shared":"1"},"optionalDependencies":{"absent":"1"}}',
      "node_modules/addon/node_modules/shared/package.json": '{"name":"shared","dependencies":{"leaf":"1"}}',
      "node_modules/shared/package.json": '{"name":"shared"}',
      "node_modules/gyp/package.json": '{"name":"gyp","dependencies":{"addon":"1"}}',
      "node_modules/leaf/package.json": '{"name":"leaf"}',
      "node_modules/unrelated/package.json": '{"name":"unrelated"}',
    });
    expect((await packageClosure(tmp.path, ["addon"])).map((p) => p.path)).toEqual([
      "node_modules/addon",
      "node_modules/addon/node_modules/shared",
      "node_modules/gyp",
      "node_modules/leaf",
    ]);
  });

  test("in an npm layout every package ships from where it is", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "node_modules/addon/package.json": '{"name":"addon","dependencies":{"gyp":"^4"}}',
      "node_modules/gyp/package.json": '{"name":"gyp"}',
    });
    expect(await packageClosure(tmp.path, ["addon"])).toEqual([
      { path: "node_modules/addon", from: "node_modules/addon" },
      { path: "node_modules/gyp", from: "node_modules/gyp" },
    ]);
  });
});

/** pnpm's layout: node_modules/<name> links into .pnpm, where each package's dependencies are links beside it. */
async function pnpmTree(root: string): Promise<void> {
  await writeTree(root, {
    "node_modules/.pnpm/foo@1.0.0/node_modules/foo/package.json": '{"name":"foo","main":"index.js","dependencies":{"dep":"1"}}',
    "node_modules/.pnpm/foo@1.0.0/node_modules/foo/index.js": 'module.exports = () => "foo+" + require("dep")();',
    "node_modules/.pnpm/foo@1.0.0/node_modules/foo/build/foo.node": "ELF",
    "node_modules/.pnpm/dep@1.0.0/node_modules/dep/package.json": '{"name":"dep","main":"index.js","dependencies":{"foo":"1"}}',
    "node_modules/.pnpm/dep@1.0.0/node_modules/dep/index.js": 'module.exports = () => "dep";',
    "node_modules/.pnpm/@s+addon@2.0.0/node_modules/@s/addon/package.json": '{"name":"@s/addon"}',
    "node_modules/.pnpm/@s+addon@2.0.0/node_modules/@s/addon/addon.node": "ELF",
  });
  await symlink("../../dep@1.0.0/node_modules/dep", join(root, "node_modules/.pnpm/foo@1.0.0/node_modules/dep"));
  // a cycle, as pnpm makes for packages depending on each other
  await symlink("../../foo@1.0.0/node_modules/foo", join(root, "node_modules/.pnpm/dep@1.0.0/node_modules/foo"));
  await symlink(".pnpm/foo@1.0.0/node_modules/foo", join(root, "node_modules/foo"));
  await mkdir(join(root, "node_modules/@s"));
  await symlink("../.pnpm/@s+addon@2.0.0/node_modules/@s/addon", join(root, "node_modules/@s/addon"));
}

describe("native packages installed through links (pnpm)", () => {
  test("packages that are links inside the folder are found; links leaving it are not", async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "fn");
    await pnpmTree(dir);
    await writeTree(tmp.path, { "elsewhere/out/package.json": '{"name":"out"}', "elsewhere/out/out.node": "ELF" });
    await symlink(join(tmp.path, "elsewhere/out"), join(dir, "node_modules/out"));
    expect(await nativePackages(dir)).toEqual(["@s/addon", "foo"]);
  });

  test("dependencies are resolved from the package's real folder and shipped where Node finds them", async () => {
    await using tmp = await tempDir();
    await pnpmTree(tmp.path);
    expect(await packageClosure(tmp.path, ["foo", "@s/addon"])).toEqual([
      { path: "node_modules/@s/addon", from: "node_modules/.pnpm/@s+addon@2.0.0/node_modules/@s/addon" },
      { path: "node_modules/foo", from: "node_modules/.pnpm/foo@1.0.0/node_modules/foo" },
      // dep's own dependency, foo, is the one Node finds above it: the cycle ends there
      { path: "node_modules/foo/node_modules/dep", from: "node_modules/.pnpm/dep@1.0.0/node_modules/dep" },
    ]);
  });

  test("packed, unpacked and loaded: the package and its dependency are real files that resolve", async () => {
    await using tmp = await tempDir();
    const dir = join(tmp.path, "fn");
    await pnpmTree(dir);
    const archive = await packDir(dir, { include: await packageClosure(dir, await nativePackages(dir)) });
    const out = join(tmp.path, "unpacked");
    await mkdir(out);
    await safeUnpack(archive, out, { maxBytes: 1 << 20, maxFiles: 100 }); // refuses links: it holds none
    const proc = Bun.spawnSync([process.execPath, "-e", 'console.log(require("foo")())'], { cwd: out });
    expect(proc.stderr.toString()).toBe("");
    expect(proc.stdout.toString().trim()).toBe("foo+dep");
  });
});

describe("packageMain", () => {
  test("package.json main, only inside the folder", async () => {
    await using tmp = await tempDir();
    expect(await packageMain(tmp.path)).toBeUndefined();
    await writeTree(tmp.path, { "package.json": '{"main":"./dist/app.js"}' });
    expect(await packageMain(tmp.path)).toBe("dist/app.js");
    await writeTree(tmp.path, { "package.json": '{"main":"/etc/passwd"}' });
    expect(await packageMain(tmp.path)).toBeUndefined();
  });
});
