/**
 * A bun version's artifact: the function's folder as uploaded, with the bundle at its root
 * as BUNDLE_FILE, node_modules cut down to the packages the bundle imports at run time
 * (native addons and what they depend on), and every file read-only. Instances get a copy
 * of it (hard links) they see as their working directory.
 */
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, lstat, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { packFiles, type PackFile } from "./pack.ts";
import { safeUnpack, type UnpackLimits } from "./unpack.ts";

/** Name of the bundle at the root of a version's folder (and of an instance's copy of it). */
export const BUNDLE_FILE = ".forge-bundle.mjs";

/** Names never part of an artifact, at its root: version control and forge's own state. */
const DROPPED = [".git", ".forge"] as const;

/**
 * Makes an unpacked folder an artifact in place: drops .git and .forge, keeps of
 * node_modules only the folders in `keep` (relative paths, or packageClosure's folders by
 * their `path`) and the folders above them, and makes every file read-only (folders stay
 * writable by forge, so it can delete them; an instance's copy is a folder of its own).
 */
export async function sealArtifact(dir: string, keep: readonly (string | { path: string })[]): Promise<void> {
  for (const name of DROPPED) await rm(join(dir, name), { recursive: true, force: true });
  await prune(dir, "node_modules", new Set(keep.map((k) => (typeof k === "string" ? k : k.path))));
  await readOnly(dir);
}

/**
 * A version's folder as a tar.gz, every file of it (the artifact is already what ships, so
 * no ignore rules apply), for the nodes that lack it (several nodes, DESIGN §9).
 */
export async function packArtifact(dir: string): Promise<Uint8Array> {
  const files: PackFile[] = [];
  for (const path of [...new Bun.Glob("**/*").scanSync({ cwd: dir, dot: true, onlyFiles: true, followSymlinks: false })].sort()) {
    const info = await lstat(join(dir, path));
    if (info.isFile()) files.push({ path, data: await Bun.file(join(dir, path)).bytes(), mode: info.mode });
  }
  return packFiles(files);
}

/**
 * Puts an artifact packed by packArtifact (on another node) at `dest`, read-only as there:
 * unpacked safely beside it, then moved in whole, so a half-written folder is never seen.
 * A `dest` that appeared meanwhile (another converge) is kept.
 */
export async function unpackArtifact(archive: Uint8Array, dest: string, limits: UnpackLimits): Promise<void> {
  const tmp = `${dest}.part-${randomBytes(4).toString("hex")}`;
  try {
    await safeUnpack(archive, tmp, limits);
    await readOnly(tmp);
    if (!existsSync(dest)) await rename(tmp, dest);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * sha256 (hex) of a folder: every file's path, mode and bytes, and every folder's path, in
 * path order. Each entry is framed (its kind, the path's length, the content's length), so
 * no two folders hash alike by moving bytes across entries: {a: "", b: "c"} and
 * {a: "b\0c"} once did, and a second deploy reused the first's artifact folder.
 */
export async function digestFolder(dir: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  const paths = [...new Bun.Glob("**/*").scanSync({ cwd: dir, dot: true, onlyFiles: false, followSymlinks: false })].sort();
  for (const path of paths) {
    const info = await lstat(join(dir, path));
    const name = new TextEncoder().encode(path);
    if (info.isDirectory()) {
      hasher.update(entryHeader("d", name.byteLength, 0, 0));
      hasher.update(name);
    } else if (info.isFile()) {
      const bytes = await Bun.file(join(dir, path)).bytes();
      hasher.update(entryHeader("f", name.byteLength, info.mode & 0o7777, bytes.byteLength));
      hasher.update(name);
      hasher.update(bytes);
    }
    // an artifact holds no links (sealed from a safe unpack), and nothing else is copied to instances
  }
  return hasher.digest("hex");
}

// --- internal ---

/** Removes what under `rel` is neither kept nor above something kept. */
async function prune(dir: string, rel: string, keep: Set<string>): Promise<void> {
  if (keep.has(rel)) return;
  const above = [...keep].some((k) => k.startsWith(`${rel}/`));
  if (!above) {
    await rm(join(dir, rel), { recursive: true, force: true });
    return;
  }
  for (const entry of await readdir(join(dir, rel), { withFileTypes: true })) {
    const child = `${rel}/${entry.name}`;
    if (entry.isDirectory()) await prune(dir, child, keep);
    else await rm(join(dir, child), { force: true });
  }
}

/** kind (1 byte), path length (u32), mode (u32), content length (u64), big-endian. */
function entryHeader(kind: "d" | "f", pathBytes: number, mode: number, size: number): Uint8Array {
  const header = new DataView(new ArrayBuffer(17));
  header.setUint8(0, kind.charCodeAt(0));
  header.setUint32(1, pathBytes);
  header.setUint32(5, mode);
  header.setBigUint64(9, BigInt(size));
  return new Uint8Array(header.buffer);
}

async function readOnly(path: string): Promise<void> {
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) await readOnly(child);
    else if (entry.isFile()) await chmod(child, ((await Bun.file(child).stat()).mode & 0o111) !== 0 ? 0o555 : 0o444);
  }
}
