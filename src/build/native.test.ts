import { describe, expect, test } from "bun:test";
import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { tempDir } from "./_test-helpers.ts";
import { nativePackages, packageClosure, packageMain } from "./native.ts";

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
    expect(await packageClosure(tmp.path, ["addon"])).toEqual([
      "node_modules/addon",
      "node_modules/addon/node_modules/shared",
      "node_modules/gyp",
      "node_modules/leaf",
    ]);
  });

  test("package.json main, only inside the folder", async () => {
    await using tmp = await tempDir();
    expect(await packageMain(tmp.path)).toBeUndefined();
    await writeTree(tmp.path, { "package.json": '{"main":"./dist/app.js"}' });
    expect(await packageMain(tmp.path)).toBe("dist/app.js");
    await writeTree(tmp.path, { "package.json": '{"main":"/etc/passwd"}' });
    expect(await packageMain(tmp.path)).toBeUndefined();
  });
});
