import { describe, expect, test } from "bun:test";
import { chmod, mkdir, readdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { tempDir } from "./_test-helpers.ts";
import { digestFolder, packArtifact, sealArtifact, unpackArtifact } from "./artifact.ts";

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

describe("packArtifact and unpackArtifact (another node's copy)", () => {
  test("a sealed folder arrives with the same digest, read-only, executables kept, dot files and node_modules included", async () => {
    await using tmp = await tempDir();
    const src = await folder(join(tmp.path, "src"), {
      ".forge-bundle.mjs": "export default {}",
      ".env.example": "A=1",
      "data/message.txt": "the message",
      "bin/run.sh": "#!/bin/sh\necho hi",
      "node_modules/native/index.js": "module.exports = 1",
      ".forgeignore": "data/\n", // an ignore file of the user's: it chose what was uploaded, not what ships now
    });
    await chmod(join(src, "bin/run.sh"), 0o755);
    await sealArtifact(src, ["node_modules/native"]);
    const archive = await packArtifact(src);
    const dest = join(tmp.path, "elsewhere", "artifact");
    await mkdir(dirname(dest), { recursive: true });
    await unpackArtifact(archive, dest, { maxBytes: 1 << 20, maxFiles: 100 });
    expect(await digestFolder(dest)).toBe(await digestFolder(src));
    expect((await Bun.file(join(dest, "data/message.txt")).stat()).mode & 0o777).toBe(0o444);
    expect((await Bun.file(join(dest, "bin/run.sh")).stat()).mode & 0o777).toBe(0o555);
    // a second copy arriving at once keeps the first
    await unpackArtifact(archive, dest, { maxBytes: 1 << 20, maxFiles: 100 });
    expect(await digestFolder(dest)).toBe(await digestFolder(src));
  });

  test("an archive over the limits leaves nothing behind", async () => {
    await using tmp = await tempDir();
    const src = await folder(join(tmp.path, "src"), { "a.txt": "x".repeat(4096) });
    const dest = join(tmp.path, "artifact");
    await expect(unpackArtifact(await packArtifact(src), dest, { maxBytes: 1024, maxFiles: 100 })).rejects.toMatchObject({ status: 413 });
    expect(await readdir(tmp.path)).toEqual(["src"]);
  });
});
