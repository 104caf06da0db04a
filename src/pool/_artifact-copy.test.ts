import { describe, expect, test } from "bun:test";
import { existsSync, statSync } from "node:fs";
import { chmod, mkdir, mkdtemp, readdir, realpath, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode } from "../errors.ts";
import { copyArtifact } from "./_artifact-copy.ts";
import { BUNDLE_FILE } from "./driver.ts";

async function tempDir(under = tmpdir()): Promise<{ path: string } & AsyncDisposable> {
  const path = await realpath(await mkdtemp(join(under, "forge-copy-")));
  return { path, [Symbol.asyncDispose]: () => rm(path, { recursive: true, force: true }) };
}

/** A sealed version's folder: the bundle, an executable, and `files` more in folders of 25. */
async function artifact(dir: string, files: number): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, BUNDLE_FILE), "export default {}");
  await writeFile(join(dir, "run.sh"), "#!/bin/sh\n");
  await chmod(join(dir, "run.sh"), 0o555);
  for (let i = 0; i < files; i++) {
    const folder = join(dir, "data", `d${Math.floor(i / 25)}`);
    if (i % 25 === 0) await mkdir(folder, { recursive: true });
    await writeFile(join(folder, `f${i}.txt`), String(i));
    await chmod(join(folder, `f${i}.txt`), 0o444);
  }
}

async function listing(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).sort();
}

describe("copyArtifact", () => {
  for (const files of [10, 1_000]) {
    test(`links every file of a ${files}-file folder, in folders forge owns`, async () => {
      await using tmp = await tempDir();
      const from = join(tmp.path, "version");
      await artifact(from, files);
      const to = join(tmp.path, "instance", "fn");
      await mkdir(join(tmp.path, "instance"));
      expect(await copyArtifact(from, to)).toEqual({ linked: true });
      expect(await listing(to)).toEqual(await listing(from));
      expect(statSync(join(to, "data/d0/f0.txt")).ino).toBe(statSync(join(from, "data/d0/f0.txt")).ino);
      expect((await stat(join(to, "data/d0"))).mode & 0o777).toBe(0o755);
    });
  }

  test("replaces what is at the target", async () => {
    await using tmp = await tempDir();
    const from = join(tmp.path, "version");
    await artifact(from, 300);
    const to = join(tmp.path, "fn");
    await mkdir(join(to, "stale"), { recursive: true });
    await copyArtifact(from, to);
    expect(existsSync(join(to, "stale"))).toBe(false);
    expect(await listing(to)).toEqual(await listing(from));
  });

  // /dev/shm is a filesystem of its own on Linux: links fail there with EXDEV
  const otherFs = existsSync("/dev/shm") && statSync("/dev/shm").dev !== statSync(tmpdir()).dev;
  test.skipIf(!otherFs)("copies across filesystems, keeping files read-only and executables executable", async () => {
    await using tmp = await tempDir();
    await using shm = await tempDir("/dev/shm");
    const from = join(tmp.path, "version");
    await artifact(from, 300);
    const to = join(shm.path, "fn");
    expect(await copyArtifact(from, to)).toEqual({ linked: false });
    expect(await listing(to)).toEqual(await listing(from));
    expect(await Bun.file(join(to, "data/d11/f299.txt")).text()).toBe("299");
    expect((await stat(join(to, "data/d11/f299.txt"))).mode & 0o777).toBe(0o444);
    expect((await stat(join(to, "run.sh"))).mode & 0o777).toBe(0o555);
  });

  test("a folder without the bundle is InstanceStartFailed", async () => {
    await using tmp = await tempDir();
    await expect(copyArtifact(tmp.path, join(tmp.path, "fn"))).rejects.toMatchObject({ code: ErrorCode.InstanceStartFailed });
  });
});
