/**
 * Packs a function folder (or an in-memory set of files) into the tar.gz that
 * `POST /v1/functions/:name/deploy` takes. The output is deterministic: the same
 * files give the same bytes (sorted entries, fixed times and owners), so digests of
 * uploads are stable across machines.
 */
import { statSync } from "node:fs";
import { lstat, readdir, readFile, realpath, stat } from "node:fs/promises";
import { join, sep } from "node:path";
import tar from "tar-stream";
import type { Header, Pack } from "tar-stream";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { PackageFolder } from "./native.ts";

export interface PackOptions {
  /** Extra ignore patterns (gitignore-like), applied after `.forgeignore`. Default none. */
  ignore?: string[];
  /** Stop with ArchiveTooLarge once file contents pass this many bytes. Default no limit. */
  maxBytes?: number;
  /**
   * Folders (relative, `/`-separated) packed although they lie under an always-ignored
   * name, e.g. `node_modules/bufferutil` (native addons ship as packages); ignore files do
   * not apply inside them. A PackageFolder (packageClosure) is packed at its `path` from
   * the files of its `from`, as real files (pnpm's links are read through). Default none.
   */
  include?: readonly (string | PackageFolder)[];
  /** Files added from memory; one at the path of a file of the folder replaces it. Default none. */
  files?: PackFile[];
}

export interface PackFile {
  /** Relative path with `/` separators, e.g. `index.js` or `lib/util.js`. */
  path: string;
  data: Uint8Array | string;
  /** Unix mode; only the executable bits are kept. Default 0o644. */
  mode?: number;
}

/** Names skipped at any depth: version control, installed dependencies, forge's own data. */
export const ALWAYS_IGNORED = [".git", "node_modules", ".forge"] as const;

export const IGNORE_FILE = ".forgeignore";

/**
 * Credentials a function folder often holds and its code has no business reading from a
 * file in the instance, skipped at any depth before `.forgeignore` is read, so a line
 * there re-includes one (`!.env.production`; for a folder, `!.aws/`). Same syntax as
 * `.forgeignore`.
 *
 * Not `*.pem`, `*.crt` or `*.key`: a function reads CA bundles (AWS's RDS global-bundle.pem,
 * a company's root certificate) to open TLS connections, and silently dropping one breaks
 * them at run time, far from the deploy; those are public, and a private key a function
 * must sign with is the developer's to ship or not. SSH keys by their usual names are
 * never a function's.
 */
export const DEFAULT_IGNORED = [
  // dotenv files: a function's variables are set with forge.json "env" or `forge deploy --env`
  ".env",
  ".env.*",
  // package registry credentials: the bundle already holds the packages
  ".npmrc",
  ".yarnrc",
  ".yarnrc.yml",
  // cloud, SSH and other login credentials
  ".aws/",
  ".ssh/",
  ".netrc",
  ".git-credentials",
  "id_rsa",
  "id_dsa",
  "id_ecdsa",
  "id_ed25519",
] as const;

/**
 * A tar.gz of `dir`, paths relative to it. Skips `.git`, `node_modules`, `.forge`,
 * DEFAULT_IGNORED (unless `.forgeignore` re-includes it) and what `.forgeignore` lists.
 * Symlinks whose target stays inside the folder are read through (packed as the file or
 * folder they point to); links leaving it are skipped, so a pack never carries a link and
 * never leaks a file from outside the folder.
 */
export async function packDir(dir: string, options: PackOptions = {}): Promise<Uint8Array> {
  const root = await realpath(dir).catch((cause: unknown) => {
    throw new ForgeError(ErrorCode.BadRequest, 400, `cannot read the folder ${dir}`, {
      hint: "pass the path of an existing function folder",
      cause,
    });
  });
  const rules = [...DEFAULT_RULES, ...(await readIgnoreFile(root)), ...parseIgnore((options.ignore ?? []).join("\n"))];
  const entries: PackEntry[] = [];
  const budget = { left: options.maxBytes ?? Number.POSITIVE_INFINITY };
  await walk(root, root, "", rules, new Set([root]), entries, budget);
  for (const include of options.include ?? []) {
    const path = checkRelativePath(typeof include === "string" ? include : include.path);
    const from = typeof include === "string" ? path : checkRelativePath(include.from);
    const real = await realpath(join(root, from)).catch(() => null);
    if (real === null || !isInside(root, real) || !(await stat(real)).isDirectory()) continue;
    const parts = path.split("/");
    for (let i = 1; i <= parts.length; i++) entries.push({ type: "directory", path: parts.slice(0, i).join("/") });
    await walk(root, real, path, [], new Set([root, real]), entries, budget);
  }
  // one entry a path, in path order as packFiles gives; an in-memory file replaces the folder's
  const byPath = new Map<string, PackEntry>();
  for (const entry of entries) if (!byPath.has(entry.path)) byPath.set(entry.path, entry);
  for (const file of options.files ?? []) {
    const path = checkRelativePath(file.path);
    const data = typeof file.data === "string" ? new TextEncoder().encode(file.data) : file.data;
    budget.left -= data.byteLength;
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) {
      const parent = parts.slice(0, i).join("/");
      if (!byPath.has(parent)) byPath.set(parent, { type: "directory", path: parent });
    }
    byPath.set(path, { type: "file", path, data, mode: normalMode(file.mode ?? 0o644) });
  }
  if (budget.left < 0) {
    throw new ForgeError(ErrorCode.ArchiveTooLarge, 413, `the folder is over the upload limit`, {
      hint: `list large files and build output in ${IGNORE_FILE}, one pattern a line (e.g. dist/ or *.mp4)`,
    });
  }
  return tarGz([...byPath.values()].sort((a, b) => compare(a.path, b.path)));
}

/** A tar.gz of in-memory files, in path order; parent folders are implied. */
export async function packFiles(files: PackFile[]): Promise<Uint8Array> {
  const seen = new Set<string>();
  const entries: PackEntry[] = [];
  for (const file of files) {
    const path = checkRelativePath(file.path);
    if (seen.has(path)) {
      throw new ForgeError(ErrorCode.InvalidArchive, 400, `"${path}" is listed twice`, { hint: "give each file one path" });
    }
    seen.add(path);
    const data = typeof file.data === "string" ? new TextEncoder().encode(file.data) : file.data;
    entries.push({ type: "file", path, data, mode: normalMode(file.mode ?? 0o644) });
  }
  entries.sort((a, b) => compare(a.path, b.path));
  return tarGz(entries);
}

/**
 * Whether a change at `path` (relative to `dir`, `/`-separated) can change a pack of `dir`:
 * false under `.git`, `node_modules` or `.forge`, or when DEFAULT_IGNORED and `.forgeignore`
 * (as it reads now) leave it out. For a watcher (`forge dev`), which skips such changes
 * without packing.
 */
export async function packWatchFilter(dir: string): Promise<(path: string) => boolean> {
  const rules = [...DEFAULT_RULES, ...(await readIgnoreFile(dir))];
  return (path) => {
    const parts = path.split(/[\\/]/).filter((p) => p !== "" && p !== ".");
    if (parts.length === 0) return true;
    if (parts.some((p) => (ALWAYS_IGNORED as readonly string[]).includes(p))) return false;
    // an ignored folder is not entered by packDir, so nothing below it counts
    for (let i = 1; i < parts.length; i++) if (ignored(rules, parts.slice(0, i).join("/"), true)) return false;
    const rel = parts.join("/");
    if (ignored(rules, rel, false)) return false;
    // a rule for folders only (`dist/`) leaves out a folder of that name, not a file
    return !(ignored(rules, rel, true) && isDirectory(join(dir, rel)));
  };
}

// --- internal ---

type PackEntry =
  | { type: "file"; path: string; data: Uint8Array; mode: number }
  | { type: "directory"; path: string };

interface IgnoreRule {
  glob: Bun.Glob;
  negate: boolean;
  dirOnly: boolean;
}

const DEFAULT_RULES = parseIgnore(DEFAULT_IGNORED.join("\n"));

/** An old fixed time (the zip epoch) rather than 0, which some tar tools warn about. */
const FIXED_MTIME = new Date("1980-01-01T00:00:00Z");

async function walk(
  root: string,
  real: string,
  rel: string,
  rules: IgnoreRule[],
  ancestors: Set<string>,
  out: PackEntry[],
  budget: { left: number },
): Promise<void> {
  const names = (await readdir(real)).sort(compare);
  for (const name of names) {
    if ((ALWAYS_IGNORED as readonly string[]).includes(name)) continue;
    const path = rel === "" ? name : `${rel}/${name}`;
    const abs = join(real, name);
    let info = await lstat(abs);
    let target = abs;
    if (info.isSymbolicLink()) {
      const resolved = await realpath(abs).catch(() => null);
      // dangling links and links leaving the folder are dropped, never followed
      if (resolved === null || !isInside(root, resolved)) continue;
      target = resolved;
      info = await stat(resolved);
    }
    if (info.isDirectory()) {
      if (ignored(rules, path, true)) continue;
      // a link to an enclosing folder would recurse forever
      if (ancestors.has(target)) continue;
      out.push({ type: "directory", path });
      ancestors.add(target);
      await walk(root, target, path, rules, ancestors, out, budget);
      ancestors.delete(target);
    } else if (info.isFile()) {
      if (ignored(rules, path, false)) continue;
      budget.left -= info.size;
      if (budget.left < 0) {
        throw new ForgeError(ErrorCode.ArchiveTooLarge, 413, `the folder is over the upload limit (reached at ${path})`, {
          hint: `list large files and build output in ${IGNORE_FILE}, one pattern a line (e.g. dist/ or *.mp4)`,
        });
      }
      out.push({ type: "file", path, data: await readFile(target), mode: normalMode(info.mode) });
    }
    // sockets, fifos and devices have no place in a function folder
  }
}

async function readIgnoreFile(root: string): Promise<IgnoreRule[]> {
  const file = Bun.file(join(root, IGNORE_FILE));
  if (!(await file.exists())) return [];
  return parseIgnore(await file.text());
}

/**
 * gitignore-like: `#` comments, `!` re-includes, a trailing `/` matches folders only, a
 * pattern with a `/` before its end is anchored to the folder root, one without matches
 * at any depth. An ignored folder is not entered, so nothing below it can be re-included
 * (as in git).
 */
function parseIgnore(text: string): IgnoreRule[] {
  const rules: IgnoreRule[] = [];
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.trimEnd();
    if (line === "" || line.startsWith("#")) continue;
    const negate = line.startsWith("!");
    if (negate) line = line.slice(1);
    if (line.startsWith("\\")) line = line.slice(1); // "\#file" and "\!file" escape the markers
    const dirOnly = line.endsWith("/");
    line = line.replace(/\/+$/, "");
    if (line === "") continue;
    const anchored = line.includes("/");
    line = line.replace(/^\/+/, "");
    rules.push({ glob: new Bun.Glob(anchored || line.startsWith("**") ? line : `**/${line}`), negate, dirOnly });
  }
  return rules;
}

function ignored(rules: IgnoreRule[], path: string, isDir: boolean): boolean {
  let result = false;
  for (const rule of rules) {
    if (rule.dirOnly && !isDir) continue;
    if (rule.glob.match(path)) result = !rule.negate;
  }
  return result;
}

async function tarGz(entries: PackEntry[]): Promise<Uint8Array> {
  const pack = tar.pack();
  const chunks: Uint8Array[] = [];
  // read while writing: tar-stream holds back entries until its output is consumed
  const collected = (async () => {
    // streamx types its chunks as unknown; a tar pack only ever emits buffers
    for await (const chunk of pack) chunks.push(chunk as Uint8Array);
  })();
  for (const entry of entries) {
    const common = { name: entry.path, mtime: FIXED_MTIME, uid: 0, gid: 0, uname: "", gname: "" };
    if (entry.type === "directory") {
      await addEntry(pack, { ...common, type: "directory", mode: 0o755 });
    } else {
      await addEntry(pack, { ...common, type: "file", mode: entry.mode, size: entry.data.byteLength }, entry.data);
    }
  }
  pack.finalize();
  await collected;
  // gzip's header time field is left 0 by zlib, so the output stays deterministic
  return Bun.gzipSync(Buffer.concat(chunks));
}

function addEntry(pack: Pack, header: Partial<Header> & { name: string }, data?: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null) => (err ? reject(err) : resolve());
    if (data) pack.entry(header, data, done);
    else pack.entry(header, done);
  });
}

function checkRelativePath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "" && p !== ".");
  if (path.startsWith("/") || path.includes("\\") || path.includes("\0") || parts.length === 0 || parts.includes("..")) {
    throw new ForgeError(ErrorCode.InvalidArchive, 400, `"${path.slice(0, 100)}" is not a relative path inside the archive`, {
      hint: "use paths like index.js or lib/util.js, without .. or a leading /",
    });
  }
  return parts.join("/");
}

/** Keeps only whether the file is executable; owners' write bits and setuid do not travel. */
function normalMode(mode: number): number {
  return mode & 0o111 ? 0o755 : 0o644;
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false; // gone already: a file or folder, it was removed
  }
}

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** Byte order, not locale order, so every machine sorts the same way. */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
