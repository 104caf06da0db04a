import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createGzip } from "node:zlib";
import { ErrorCode, ForgeError } from "../errors.ts";
import { rawTar, rawTarGz, tempDir } from "./_test-helpers.ts";
import type { RawEntry } from "./_test-helpers.ts";
import { packFiles } from "./pack.ts";
import { safeUnpack } from "./unpack.ts";
import type { UnpackLimits } from "./unpack.ts";

const LIMITS: UnpackLimits = { maxBytes: 1 << 20, maxFiles: 100 };
const SENTINEL_TEXT = "untouched";

/**
 * Unpacks `archive` into <tmp>/work/dest beside a sentinel file, expects the given error
 * code, and checks that nothing changed outside dest and that dest is empty.
 */
async function expectRefused(archive: Uint8Array, code: ErrorCode, limits: UnpackLimits = LIMITS): Promise<ForgeError> {
  await using tmp = await tempDir();
  const work = join(tmp.path, "work");
  const dest = join(work, "dest");
  await mkdir(work);
  await writeFile(join(tmp.path, "sentinel"), SENTINEL_TEXT);
  const before = await listTree(tmp.path);

  const err = await safeUnpack(archive, dest, limits).catch((e: unknown) => e);

  expect(err).toBeInstanceOf(ForgeError);
  const forgeErr = err as ForgeError;
  expect(forgeErr.code).toBe(code);
  expect(forgeErr.hint).toBeTruthy();
  expect(existsSync(dest) ? await readdir(dest) : []).toEqual([]);
  expect(await Bun.file(join(tmp.path, "sentinel")).text()).toBe(SENTINEL_TEXT);
  expect(await listTree(tmp.path)).toEqual(before);
  return forgeErr;
}

async function listTree(root: string): Promise<string[]> {
  return (await readdir(root, { recursive: true })).filter((p) => !p.startsWith("work/dest/") && p !== "work/dest").sort();
}

/** A harmless file first, so that refusing a later entry must also clean up. */
const GOOD: RawEntry = { header: { name: "index.ts" }, data: "export default 1" };

describe("safeUnpack", () => {
  test("unpacks files and folders, keeping the executable bit", async () => {
    await using tmp = await tempDir();
    const dest = join(tmp.path, "dest");
    const archive = await rawTarGz([
      { header: { name: "./", type: "directory" } },
      { header: { name: "./index.ts" }, data: "export default 1" },
      { header: { name: "bin/", type: "directory" } },
      { header: { name: "bin/run", mode: 0o4755 }, data: "#!/bin/sh" },
    ]);
    expect(await safeUnpack(archive, dest, LIMITS)).toEqual({ files: 2, bytes: 25 });
    expect(await Bun.file(join(dest, "index.ts")).text()).toBe("export default 1");
    const { mode } = await Bun.file(join(dest, "bin/run")).stat();
    expect(mode & 0o7777).toBe(0o755);
  });

  test("refuses a destination that is not empty", async () => {
    await using tmp = await tempDir();
    await writeFile(join(tmp.path, "x"), "x");
    const err = await safeUnpack(await packFiles([{ path: "a", data: "a" }]), tmp.path, LIMITS).catch((e: unknown) => e);
    expect((err as ForgeError).code).toBe(ErrorCode.Internal);
    expect(existsSync(join(tmp.path, "x"))).toBe(true);
  });

  test("refuses ../ paths", async () => {
    const err = await expectRefused(await rawTarGz([GOOD, { header: { name: "../x" }, data: "pwned" }]), ErrorCode.InvalidArchive);
    expect(err.message).toContain("..");
    await expectRefused(await rawTarGz([{ header: { name: "a/../../../x" }, data: "pwned" }]), ErrorCode.InvalidArchive);
  });

  test("refuses absolute paths", async () => {
    await using tmp = await tempDir();
    const target = join(tmp.path, "abs");
    await expectRefused(await rawTarGz([GOOD, { header: { name: target }, data: "pwned" }]), ErrorCode.InvalidArchive);
    expect(existsSync(target)).toBe(false);
    await expectRefused(await rawTarGz([{ header: { name: "C:/x" }, data: "pwned" }]), ErrorCode.InvalidArchive);
  });

  test("refuses NUL and backslash tricks", async () => {
    await expectRefused(await rawTarGz([{ header: { name: "..\\x" }, data: "pwned" }]), ErrorCode.InvalidArchive);
    // a NUL can only arrive through a pax path record: `pax: {}` makes tar-stream write one
    const err = await expectRefused(await rawTarGz([GOOD, { header: { name: "ok\0evil", pax: {} }, data: "x" }]), ErrorCode.InvalidArchive);
    expect(err.message).toContain("NUL");
  });

  test("refuses a symlink to / followed by a file written through it", async () => {
    await using tmp = await tempDir();
    const through = join(tmp.path, "pwned");
    const archive = await rawTarGz([
      GOOD,
      { header: { name: "evil", type: "symlink", linkname: "/" } },
      { header: { name: `evil${through}` }, data: "pwned" },
    ]);
    const err = await expectRefused(archive, ErrorCode.InvalidArchive);
    expect(err.message).toContain("link");
    expect(existsSync(through)).toBe(false);
  });

  test("refuses symlinks even when they stay inside", async () => {
    const archive = await rawTarGz([GOOD, { header: { name: "alias.ts", type: "symlink", linkname: "index.ts" } }]);
    await expectRefused(archive, ErrorCode.InvalidArchive);
  });

  test("refuses an early bad entry in a long archive without waiting for the rest", async () => {
    const noise = (i: number): RawEntry => ({ header: { name: `noise${i}` }, data: crypto.getRandomValues(new Uint8Array(64 * 1024)) });
    const archive = await rawTarGz([GOOD, { header: { name: "../x" }, data: "pwned" }, ...Array.from({ length: 32 }, (_, i) => noise(i))]);
    await expectRefused(archive, ErrorCode.InvalidArchive, { maxBytes: 8 << 20, maxFiles: 100 });
    const late = await rawTarGz([...Array.from({ length: 8 }, (_, i) => noise(i)), { header: { name: "dev", type: "fifo" } }, ...Array.from({ length: 8 }, (_, i) => noise(i + 8))]);
    await expectRefused(late, ErrorCode.InvalidArchive, { maxBytes: 8 << 20, maxFiles: 100 });
  });

  test("refuses hard links", async () => {
    const archive = await rawTarGz([GOOD, { header: { name: "passwd", type: "link", linkname: "../sentinel" } }]);
    const err = await expectRefused(archive, ErrorCode.InvalidArchive);
    expect(err.message).toContain("hard link");
  });

  test("refuses devices and fifos", async () => {
    const device = await rawTarGz([GOOD, { header: { name: "null", type: "character-device", devmajor: 1, devminor: 3 } }]);
    const err = await expectRefused(device, ErrorCode.InvalidArchive);
    expect(err.message).toContain("character-device");
    await expectRefused(await rawTarGz([{ header: { name: "disk", type: "block-device", devmajor: 8 } }]), ErrorCode.InvalidArchive);
    await expectRefused(await rawTarGz([{ header: { name: "pipe", type: "fifo" } }]), ErrorCode.InvalidArchive);
  });

  test("refuses a body that is not gzip", async () => {
    const random = crypto.getRandomValues(new Uint8Array(4096));
    random[0] = 0x42; // never a gzip magic by chance
    const err = await expectRefused(random, ErrorCode.InvalidArchive);
    expect(err.message).toBe("the body is not a gzip archive");
    expect(err.hint).toContain("Content-Type: application/gzip");
    expect(err.status).toBe(400);
  });

  test("refuses gzip that is not a tar, and truncated gzip", async () => {
    await expectRefused(Bun.gzipSync(crypto.getRandomValues(new Uint8Array(4096))), ErrorCode.InvalidArchive);
    const whole = await rawTarGz([GOOD, { header: { name: "b.txt" }, data: "b".repeat(5000) }]);
    await expectRefused(whole.subarray(0, whole.byteLength - 20), ErrorCode.InvalidArchive);
  });

  test("refuses a tar cut off in the middle of a file", async () => {
    const tarBytes = await rawTar([{ header: { name: "big" }, data: "x".repeat(4096) }]);
    await expectRefused(Bun.gzipSync(tarBytes.subarray(0, 1024)), ErrorCode.InvalidArchive);
  });

  test("refuses a file and a folder of the same name", async () => {
    const archive = await rawTarGz([GOOD, { header: { name: "index.ts/x" }, data: "x" }]);
    await expectRefused(archive, ErrorCode.InvalidArchive);
  });

  test("stops a gzip bomb of file content at maxBytes (413)", async () => {
    // 8 MB of zeros compress to a few KB; the limit is 1 MB
    const bomb = await rawTarGz([GOOD, { header: { name: "zeros.bin" }, data: new Uint8Array(8 << 20) }]);
    expect(bomb.byteLength).toBeLessThan(64 * 1024);
    const err = await expectRefused(bomb, ErrorCode.ArchiveTooLarge, { maxBytes: 1 << 20, maxFiles: 100 });
    expect(err.status).toBe(413);
  });

  test("counts file content across files, not one file at a time", async () => {
    const files: RawEntry[] = Array.from({ length: 5 }, (_, i) => ({ header: { name: `f${i}` }, data: new Uint8Array(300 * 1024) }));
    await expectRefused(await rawTarGz(files), ErrorCode.ArchiveTooLarge, { maxBytes: 1 << 20, maxFiles: 100 });
  });

  test("stops early: a header announcing too much fails before its data arrives", async () => {
    // the archive ends after 1 MB of a 64 MB file: stopping early gives 413, reading on would give 400 (truncated)
    const gz = await gzipStream([ustarFileHeader("huge", 64 << 20), new Uint8Array(1 << 20)]);
    await expectRefused(gz, ErrorCode.ArchiveTooLarge, { maxBytes: 1 << 20, maxFiles: 100 });
  });

  test("stops a bomb of tar padding that carries no file content", async () => {
    // a valid archive followed by 64 MB of zero blocks, which tar readers skip without end
    const small = await rawTar([GOOD]);
    const gz = await gzipStream([small, ...Array.from({ length: 64 }, () => new Uint8Array(1 << 20))]);
    expect(gz.byteLength).toBeLessThan(256 * 1024);
    await expectRefused(gz, ErrorCode.ArchiveTooLarge, { maxBytes: 1 << 20, maxFiles: 10 });
  });

  test("refuses more than maxFiles entries (413)", async () => {
    const files: RawEntry[] = Array.from({ length: 20 }, (_, i) => ({ header: { name: `f${i}.txt` }, data: "x" }));
    const err = await expectRefused(await rawTarGz(files), ErrorCode.ArchiveTooLarge, { maxBytes: 1 << 20, maxFiles: 10 });
    expect(err.message).toContain("10 files");
  });
});

/** gzip of several chunks without holding their concatenation twice. */
async function gzipStream(chunks: Uint8Array[]): Promise<Uint8Array> {
  const gzip = createGzip();
  const out: Uint8Array[] = [];
  const reading = (async () => {
    for await (const chunk of gzip as AsyncIterable<Buffer>) out.push(chunk);
  })();
  for (const chunk of chunks) gzip.write(chunk);
  gzip.end();
  await reading;
  return Buffer.concat(out);
}

/** A bare ustar header for a regular file of `size` bytes, with no data after it. */
function ustarFileHeader(name: string, size: number): Uint8Array {
  const block = new Uint8Array(512);
  const put = (offset: number, text: string) => block.set(new TextEncoder().encode(text), offset);
  const octal = (n: number, width: number) => `${n.toString(8).padStart(width - 1, "0")}\0`;
  put(0, name);
  put(100, octal(0o644, 8));
  put(108, octal(0, 8));
  put(116, octal(0, 8));
  put(124, octal(size, 12));
  put(136, octal(0, 12));
  put(156, "0");
  put(257, "ustar\0");
  put(263, "00");
  put(148, "        "); // the checksum counts its own field as spaces
  const sum = block.reduce((a, b) => a + b, 0);
  put(148, `${sum.toString(8).padStart(6, "0")}\0 `);
  return block;
}
