import { describe, expect, test } from "bun:test";
import { chmod, mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { tempDir } from "./_test-helpers.ts";
import { digestFolder } from "./artifact.ts";

async function folder(root: string, files: Record<string, string>): Promise<string> {
  await mkdir(root, { recursive: true });
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
  return root;
}

describe("digestFolder", () => {
  test("the same files give the same digest, wherever the folder is", async () => {
    await using tmp = await tempDir();
    const files = { "index.js": "i", "lib/a.js": "a" };
    expect(await digestFolder(await folder(join(tmp.path, "x"), files))).toBe(await digestFolder(await folder(join(tmp.path, "y"), files)));
  });

  test("bytes moved from one file into another's name or content change it", async () => {
    await using tmp = await tempDir();
    const a = await digestFolder(await folder(join(tmp.path, "a"), { a: "", b: "c" }));
    const b = await digestFolder(await folder(join(tmp.path, "b"), { a: "b\0c" }));
    const c = await digestFolder(await folder(join(tmp.path, "c"), { ab: "c" }));
    expect(new Set([a, b, c]).size).toBe(3);
  });

  test("a file's mode and an empty folder change it", async () => {
    await using tmp = await tempDir();
    const plain = await folder(join(tmp.path, "plain"), { "run.sh": "#!/bin/sh" });
    await chmod(join(plain, "run.sh"), 0o444);
    const executable = await folder(join(tmp.path, "executable"), { "run.sh": "#!/bin/sh" });
    await chmod(join(executable, "run.sh"), 0o555);
    const withFolder = await folder(join(tmp.path, "with-folder"), { "run.sh": "#!/bin/sh" });
    await chmod(join(withFolder, "run.sh"), 0o444);
    await mkdir(join(withFolder, "uploads"));
    const digests = [await digestFolder(plain), await digestFolder(executable), await digestFolder(withFolder)];
    expect(new Set(digests).size).toBe(3);
  });
});
