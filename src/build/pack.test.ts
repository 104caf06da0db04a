import { describe, expect, test } from "bun:test";
import { chmod, mkdir, symlink, utimes, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { listArchive, tempDir } from "./_test-helpers.ts";
import { packDir, packFiles, packWatchFilter } from "./pack.ts";
import { safeUnpack } from "./unpack.ts";

async function writeTree(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), text);
  }
}

async function names(gz: Uint8Array): Promise<string[]> {
  return (await listArchive(gz)).map((e) => e.name);
}

describe("packDir", () => {
  test("skips .git, node_modules and .forge at any depth", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "index.ts": "export default 1",
      ".git/HEAD": "ref",
      "node_modules/x/index.js": "x",
      ".forge/state": "s",
      "lib/node_modules/y.js": "y",
      "lib/util.ts": "u",
    });
    expect(await names(await packDir(tmp.path))).toEqual(["index.ts", "lib/", "lib/util.ts"]);
  });

  test("packs included folders under node_modules and in-memory files over the folder's", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "index.ts": "export default 1",
      ".forge-bundle.mjs": "stale",
      "node_modules/native/index.js": "n",
      "node_modules/native/node_modules/nested/index.js": "skipped unless included",
      "node_modules/@s/dep/index.js": "d",
      "node_modules/bundled/index.js": "b",
    });
    const gz = await packDir(tmp.path, {
      include: ["node_modules/native", "node_modules/@s/dep", "node_modules/missing"],
      files: [{ path: ".forge-bundle.mjs", data: "fresh" }],
    });
    expect(await names(gz)).toEqual([
      ".forge-bundle.mjs",
      "index.ts",
      "node_modules/",
      "node_modules/@s/",
      "node_modules/@s/dep/",
      "node_modules/@s/dep/index.js",
      "node_modules/native/",
      "node_modules/native/index.js",
    ]);
    const bundle = (await listArchive(gz)).find((e) => e.name === ".forge-bundle.mjs");
    expect(bundle?.text).toBe("fresh");
  });

  test("respects .forgeignore: comments, folders, globs, anchors and re-includes", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      ".forgeignore": ["# build output", "dist/", "*.log", "!keep.log", "/secret.txt", "docs/**/*.md", "", "cache"].join("\n"),
      "index.ts": "i",
      "dist/out.js": "o",
      "a.log": "l",
      "sub/b.log": "l",
      "keep.log": "k",
      "secret.txt": "s",
      "sub/secret.txt": "not anchored here",
      "docs/a/b/c.md": "d",
      "docs/readme.txt": "r",
      "sub/cache/x": "c",
      "dist.txt": "a file named like the folder pattern stays",
    });
    expect(await names(await packDir(tmp.path))).toEqual([
      ".forgeignore",
      "dist.txt",
      "docs/",
      "docs/a/",
      "docs/a/b/",
      "docs/readme.txt",
      "index.ts",
      "keep.log",
      "sub/",
      "sub/secret.txt",
    ]);
  });

  test("leaves out credentials by default, at any depth: dotenv files, registry tokens, cloud and SSH keys", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      "index.ts": "i",
      ".env": "SECRET=1",
      ".env.local": "SECRET=2",
      "sub/.env.production": "SECRET=3",
      ".npmrc": "//registry.npmjs.org/:_authToken=npm_x",
      ".yarnrc": "t",
      ".yarnrc.yml": "npmAuthToken: x",
      ".aws/credentials": "[default]",
      "deploy/.ssh/id_ed25519": "key",
      "id_rsa": "key",
      ".netrc": "machine x",
      ".git-credentials": "https://u:p@x",
      "certs/global-bundle.pem": "-----BEGIN CERTIFICATE-----", // a CA bundle a function opens TLS with
      "env.ts": "a file named like the pattern without the dot stays",
      ".envrc.example": "not a dotenv file",
    });
    expect(await names(await packDir(tmp.path))).toEqual([".envrc.example", "certs/", "certs/global-bundle.pem", "deploy/", "env.ts", "index.ts", "sub/"]);
  });

  test(".forgeignore re-includes a default-ignored file or folder with !", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, {
      ".forgeignore": ["!.env.production", "!.aws/"].join("\n"),
      "index.ts": "i",
      ".env": "SECRET=1",
      ".env.production": "PUBLIC_URL=x",
      ".aws/config": "[profile]",
    });
    expect(await names(await packDir(tmp.path))).toEqual([".aws/", ".aws/config", ".env.production", ".forgeignore", "index.ts"]);
  });

  test("extra ignore patterns from options", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "i", "big.bin": "b" });
    expect(await names(await packDir(tmp.path, { ignore: ["*.bin"] }))).toEqual(["index.ts"]);
  });

  test("is deterministic: same files, same bytes, whatever the times", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "b.ts": "b", "a.ts": "a", "z/y.ts": "y" });
    const first = await packDir(tmp.path);
    await utimes(join(tmp.path, "a.ts"), new Date(2001, 1, 1), new Date(2001, 1, 1));
    const second = await packDir(tmp.path);
    expect(Buffer.compare(first, second)).toBe(0);
    expect(await names(first)).toEqual(["a.ts", "b.ts", "z/", "z/y.ts"]);
  });

  test("keeps the executable bit only", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "run.sh": "#!/bin/sh", "data.txt": "d" });
    await chmod(join(tmp.path, "run.sh"), 0o4777);
    await chmod(join(tmp.path, "data.txt"), 0o666);
    const entries = await listArchive(await packDir(tmp.path));
    expect(entries.map((e) => [e.name, e.mode])).toEqual([
      ["data.txt", 0o644],
      ["run.sh", 0o755],
    ]);
  });

  test("reads links inside the folder through and drops links leaving it", async () => {
    await using tmp = await tempDir();
    const fn = join(tmp.path, "fn");
    await writeTree(tmp.path, { "outside.txt": "secret", "fn/real/a.ts": "a", "fn/index.ts": "i" });
    await symlink(join(tmp.path, "outside.txt"), join(fn, "leak.txt"));
    await symlink("/", join(fn, "root"));
    await symlink("real/a.ts", join(fn, "alias.ts"));
    await symlink("real", join(fn, "alias-dir"));
    await symlink("..", join(fn, "real/up")); // a loop back to the function folder
    await symlink("missing", join(fn, "dangling"));
    const entries = await listArchive(await packDir(fn));
    expect(entries.map((e) => e.name)).toEqual(["alias-dir/", "alias-dir/a.ts", "alias.ts", "index.ts", "real/", "real/a.ts"]);
    expect(entries.every((e) => e.type === "file" || e.type === "directory")).toBe(true);
    expect(entries.find((e) => e.name === "alias.ts")?.text).toBe("a");
  });

  test("stops at maxBytes with ArchiveTooLarge", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { "index.ts": "i", "big.bin": "x".repeat(2048) });
    const err = await packDir(tmp.path, { maxBytes: 1024 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ForgeError);
    expect((err as ForgeError).code).toBe(ErrorCode.ArchiveTooLarge);
    expect((err as ForgeError).hint).toContain(".forgeignore");
  });

  test("round trip through safeUnpack", async () => {
    await using tmp = await tempDir();
    const src = join(tmp.path, "src");
    const dest = join(tmp.path, "dest");
    await writeTree(src, { "index.ts": "export default 1", "lib/deep/x.json": '{"a":1}', "empty-file": "" });
    await mkdir(join(src, "empty-dir"));
    const result = await safeUnpack(await packDir(src), dest, { maxBytes: 1 << 20, maxFiles: 100 });
    expect(result).toEqual({ files: 3, bytes: 23 });
    expect(await Bun.file(join(dest, "index.ts")).text()).toBe("export default 1");
    expect(await Bun.file(join(dest, "lib/deep/x.json")).text()).toBe('{"a":1}');
    expect(await Bun.file(join(dest, "empty-file")).text()).toBe("");
    expect((await names(await packDir(dest))).sort()).toEqual((await names(await packDir(src))).sort());
  });
});

describe("packWatchFilter", () => {
  test("passes what a pack holds; skips what it leaves out: forge's folders, credentials, .forgeignore", async () => {
    await using tmp = await tempDir();
    await writeTree(tmp.path, { ".forgeignore": "dist/\n*.log\n", "dist/out.js": "o", "src/dist": "a file named dist" });
    const counts = await packWatchFilter(tmp.path);
    for (const path of ["index.ts", "src/lib/util.ts", ".forgeignore", "forge.json", "src/dist"]) expect([path, counts(path)]).toEqual([path, true]);
    for (const path of ["node_modules/x/index.js", "lib/.git/HEAD", ".forge/state", ".env", "dist", "dist/out.js", "a/b/debug.log"]) expect([path, counts(path)]).toEqual([path, false]);
    const packed = await names(await packDir(tmp.path));
    expect(packed).toContain("src/dist");
    expect(packed).not.toContain("dist/out.js");
  });
});

describe("packFiles", () => {
  test("packs in-memory files sorted, strings and bytes alike", async () => {
    const gz = await packFiles([
      { path: "forge.json", data: '{"name":"x"}' },
      { path: "bundle.js", data: new TextEncoder().encode("export default 1"), mode: 0o755 },
    ]);
    const entries = await listArchive(gz);
    expect(entries.map((e) => [e.name, e.mode, e.text])).toEqual([
      ["bundle.js", 0o755, "export default 1"],
      ["forge.json", 0o644, '{"name":"x"}'],
    ]);
  });

  test("refuses paths that would leave the archive", async () => {
    for (const path of ["../x", "/abs", "a/../../b", "a\\b", ""]) {
      const err = await packFiles([{ path, data: "x" }]).catch((e: unknown) => e);
      expect((err as ForgeError).code).toBe(ErrorCode.InvalidArchive);
    }
  });
});
