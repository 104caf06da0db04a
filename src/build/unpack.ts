/**
 * Unpacks an uploaded tar.gz into a fresh folder, treating every byte as hostile
 * (DESIGN §8): nothing is ever written outside `dest`, links and special files are
 * refused, and the size and file limits are counted while streaming, so a gzip bomb
 * or a lying header is stopped early instead of filling the disk.
 */
import { constants } from "node:fs";
import { mkdir, open, readdir, realpath, rm } from "node:fs/promises";
import { dirname, join, sep } from "node:path";
import { Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import tar from "tar-stream";
import type { Extract } from "tar-stream";
import { ErrorCode, ForgeError, isForgeError } from "../errors.ts";

export interface UnpackLimits {
  /** Most bytes of file content, summed over all files. */
  maxBytes: number;
  /** Most entries (files and folders). */
  maxFiles: number;
}

export interface UnpackResult {
  /** Regular files written. */
  files: number;
  /** Bytes of file content written. */
  bytes: number;
}

/**
 * Unpacks `archive` (tar.gz) into `dest`, which must be missing or empty: the caller owns
 * it. On any error `dest` is left empty and a ForgeError is thrown: InvalidArchive (400)
 * for input that is not a safe tar.gz, ArchiveTooLarge (413) past a limit.
 */
export async function safeUnpack(archive: Uint8Array, dest: string, limits: UnpackLimits): Promise<UnpackResult> {
  if (!(limits.maxBytes >= 0 && limits.maxFiles >= 0)) {
    throw new ForgeError(ErrorCode.Internal, 500, "safeUnpack needs non-negative maxBytes and maxFiles");
  }
  if (archive.byteLength < 2 || archive[0] !== 0x1f || archive[1] !== 0x8b) {
    throw new ForgeError(ErrorCode.InvalidArchive, 400, "the body is not a gzip archive", {
      hint: "send the function folder as a tar.gz with `Content-Type: application/gzip` (e.g. `tar czf fn.tgz -C ./greet .`), or use `forge deploy`",
    });
  }
  await mkdir(dest, { recursive: true });
  // the root's real path, so the inside-check below compares like with like
  const root = await realpath(dest);
  if ((await readdir(root)).length > 0) {
    // cleaning up after a failure empties dest; refusing a used folder keeps that safe
    throw new ForgeError(ErrorCode.Internal, 500, `unpack destination ${dest} is not empty`);
  }
  try {
    return await extractInto(archive, root, limits);
  } catch (err) {
    await emptyDir(root);
    throw err;
  }
}

// --- internal ---

/**
 * Decompressed bytes allowed beyond maxBytes for tar's own framing: a 512-byte header,
 * padding and maybe a pax header per entry, plus end blocks and record padding. Counting
 * every decompressed byte catches bombs made of headers or trailing zeros, which carry
 * no file content.
 */
const FRAMING_PER_ENTRY = 8 * 1024;
const FRAMING_FIXED = 1024 * 1024;
/** Compressed bytes handed to gunzip at a time: deflate expands at most ~1000x, so this bounds a burst. */
const FEED_SLICE = 4 * 1024;
const MAX_PATH = 4096;
const MAX_SEGMENT = 255;

async function extractInto(archive: Uint8Array, root: string, limits: UnpackLimits): Promise<UnpackResult> {
  const extract = tar.extract();
  const streamCap = limits.maxBytes + (limits.maxFiles + 2) * FRAMING_PER_ENTRY + FRAMING_FIXED;
  let failure: unknown = null;
  const fail = (err: unknown): void => {
    if (failure !== null) return;
    failure = err;
    // with an error: tar-stream's iterator waits forever if destroyed quietly between two next() calls
    extract.destroy(err instanceof Error ? err : new Error(String(err)));
  };

  const produce = async (): Promise<void> => {
    for await (const chunk of gunzip(archive, streamCap, limits)) {
      // destroying without `failure`: the consumer left its loop and is about to report why
      if (failure !== null || extract.destroying) return;
      if (!extract.write(chunk)) await drained(extract);
    }
    // streamx types end() as taking data although it is optional
    if (failure === null && !extract.destroying) extract.end(undefined);
  };

  const result: UnpackResult = { files: 0, bytes: 0 };
  const consume = async (): Promise<void> => {
    let entries = 0;
    try {
      for await (const entry of extract) {
        if (failure !== null) return;
        if (++entries > limits.maxFiles) throw tooLarge(`more than ${limits.maxFiles} files`);
        await writeEntry(entry, root, limits, result);
        if (failure !== null) return;
      }
    } catch (err) {
      if (isForgeError(err) || failure !== null) throw err;
      // anything else out of the iterator is tar-stream refusing the bytes
      throw new ForgeError(ErrorCode.InvalidArchive, 400, `the archive is not a valid tar file (${errorText(err)})`, {
        hint: "create it with `tar czf fn.tgz -C <folder> .` or use `forge deploy`",
        cause: err,
      });
    }
  };

  await Promise.all([produce().catch(fail), consume().catch(fail)]);
  if (failure !== null) throw failure;
  return result;
}

async function* gunzip(archive: Uint8Array, cap: number, limits: UnpackLimits): AsyncGenerator<Uint8Array> {
  const source = Readable.from(slices(archive), { objectMode: false });
  const inflate = createGunzip({ chunkSize: 64 * 1024 });
  source.pipe(inflate);
  let total = 0;
  try {
    for await (const chunk of inflate as AsyncIterable<Buffer>) {
      total += chunk.byteLength;
      if (total > cap) throw tooLarge(`more than ${formatBytes(limits.maxBytes)} once decompressed`);
      yield chunk;
    }
  } catch (err) {
    if (isForgeError(err)) throw err;
    throw new ForgeError(ErrorCode.InvalidArchive, 400, `the gzip data is corrupt or truncated (${errorText(err)})`, {
      hint: "send the whole file; create it with `tar czf fn.tgz -C <folder> .` or use `forge deploy`",
      cause: err,
    });
  } finally {
    source.destroy();
    inflate.destroy();
  }
}

function* slices(data: Uint8Array): Generator<Uint8Array> {
  for (let i = 0; i < data.byteLength; i += FEED_SLICE) yield data.subarray(i, i + FEED_SLICE);
}

interface EntryStream extends AsyncIterable<unknown> {
  header: { name: string; type: string; size: number; mode: number };
}

async function writeEntry(entry: EntryStream, root: string, limits: UnpackLimits, result: UnpackResult): Promise<void> {
  const { header } = entry;
  const rel = safeRelativePath(header.name);
  const type = header.type;
  if (type === "symlink" || type === "link") {
    throw invalid(`"${shown(header.name)}" is a ${type === "link" ? "hard link" : "symbolic link"}; links are not accepted`, "pack the folder with `forge deploy`, which reads links through, or use `tar czhf` (--dereference)");
  }
  if (type !== "file" && type !== "contiguous-file" && type !== "directory") {
    throw invalid(`"${shown(header.name)}" is a ${type}; only files and folders are accepted`, "remove devices, fifos and sockets from the function folder");
  }
  if (rel === null) {
    // "./" names the root itself, which exists already
    if (type === "directory") return drain(entry);
    throw invalid(`an entry has an empty name`, "create the archive with `tar czf fn.tgz -C <folder> .`");
  }
  const path = join(root, rel);
  // belt and braces: safeRelativePath already rules out every way out
  if (!path.startsWith(root + sep)) throw invalid(`"${shown(header.name)}" points outside the archive`, HINT_PATHS);

  if (type === "directory") {
    await fsStep(header.name, () => mkdir(path, { recursive: true, mode: 0o755 }));
    await assertRealParent(path, header.name);
    return drain(entry);
  }

  if (result.bytes + header.size > limits.maxBytes) {
    throw tooLarge(`more than ${formatBytes(limits.maxBytes)} of files (at ${shown(header.name)})`);
  }
  await fsStep(header.name, () => mkdir(dirname(path), { recursive: true, mode: 0o755 }));
  await assertRealParent(dirname(path), header.name);
  // O_NOFOLLOW: even if a link were somehow there, the write would fail instead of following it
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;
  const file = await fsStep(header.name, () => open(path, flags, header.mode & 0o111 ? 0o755 : 0o644));
  try {
    for await (const chunk of entry) {
      const data = chunk as Uint8Array; // an entry's stream only carries buffers
      result.bytes += data.byteLength;
      // counted as read: the header's size is not trusted
      if (result.bytes > limits.maxBytes) {
        throw tooLarge(`more than ${formatBytes(limits.maxBytes)} of files (at ${shown(header.name)})`);
      }
      await fsStep(header.name, () => file.write(data));
    }
  } finally {
    await file.close();
  }
  result.files++;
}

const HINT_PATHS = "use relative paths inside the folder, e.g. `tar czf fn.tgz -C <folder> .`";

/** The entry's path below the root, or null for the root itself; throws for anything that could leave it. */
function safeRelativePath(name: string): string | null {
  if (name.includes("\0") || name.includes("\\")) {
    throw invalid(`"${shown(name)}" contains a NUL or backslash`, HINT_PATHS);
  }
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name)) throw invalid(`"${shown(name)}" is an absolute path`, HINT_PATHS);
  const parts = name.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) throw invalid(`"${shown(name)}" contains "..", which could leave the folder`, HINT_PATHS);
  if (name.length > MAX_PATH || parts.some((p) => Buffer.byteLength(p) > MAX_SEGMENT)) {
    throw invalid(`"${shown(name)}" is too long a path`, `keep paths under ${MAX_PATH} characters`);
  }
  return parts.length === 0 ? null : parts.join("/");
}

/** We never create links, so every folder on the way must resolve to itself. */
async function assertRealParent(path: string, name: string): Promise<void> {
  if ((await fsStep(name, () => realpath(path))) !== path) throw invalid(`"${shown(name)}" would be written through a link`, HINT_PATHS);
}

/** Maps the file-system errors an archive can cause (a file where a folder is needed, ...) to InvalidArchive. */
async function fsStep<T>(name: string, step: () => Promise<T>): Promise<T> {
  try {
    return await step();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException | null)?.code;
    if (code === "ENOTDIR" || code === "EISDIR" || code === "EEXIST" || code === "ELOOP" || code === "ENAMETOOLONG") {
      throw invalid(`"${shown(name)}" clashes with another entry (${code})`, "an archive cannot hold a file and a folder of the same name");
    }
    throw new ForgeError(ErrorCode.Internal, 500, `could not write "${shown(name)}" while unpacking`, { cause: err });
  }
}

async function drain(entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of entry) {
    // folders carry no data; reading to the end lets tar-stream move on
  }
}

function drained(stream: Extract): Promise<void> {
  return new Promise((resolve) => {
    if (stream.destroying) return resolve(); // its "close" may have passed already
    const done = (): void => {
      stream.off("drain", done);
      stream.off("close", done);
      resolve();
    };
    stream.on("drain", done);
    stream.on("close", done);
  });
}

async function emptyDir(root: string): Promise<void> {
  // rm never follows links, so cleaning up cannot reach outside root either
  for (const name of await readdir(root).catch(() => [])) await rm(join(root, name), { recursive: true, force: true });
}

function invalid(message: string, hint: string): ForgeError {
  return new ForgeError(ErrorCode.InvalidArchive, 400, message, { hint });
}

function tooLarge(what: string): ForgeError {
  return new ForgeError(ErrorCode.ArchiveTooLarge, 413, `the archive holds ${what}`, {
    hint: "leave build output, media and dependencies out (list them in .forgeignore); `forge deploy` bundles dependencies into one file",
  });
}

function shown(name: string): string {
  // names come from the archive: keep them short and printable in messages
  return name.slice(0, 100).replace(/[^\x20-\x7e]/g, "?");
}

function formatBytes(n: number): string {
  return n >= 1024 * 1024 ? `${Math.round((n / 1024 / 1024) * 10) / 10} MB` : n >= 1024 ? `${Math.round(n / 1024)} KB` : `${n} bytes`;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
