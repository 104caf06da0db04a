/**
 * An instance's own copy of a version's folder: hard links where the filesystem allows
 * (the cell path: ~10 files of a small function link in well under a millisecond), copies
 * where it does not (another filesystem, e.g. an instance folder under the temp dir).
 *
 * Folders of the copy are forge's, 0755: an instance running as a uid of its own (or the
 * container's uid 1000) reads and enters them but can neither add nor remove a file. Files
 * keep the artifact's read-only modes (sealArtifact), so no instance writes into a file
 * every other instance of the version shares.
 */
import { chmodSync, existsSync, linkSync, mkdirSync, readdirSync, statSync, type Dirent } from "node:fs";
import { chmod, copyFile, link, mkdir, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { BUNDLE_FILE } from "./driver.ts";

/** Name of the copy inside an instance's folder. */
export const ARTIFACT_COPY = "fn";

/** Places a copy of `from` at `to` (replacing what is there) and answers whether every file is a link. */
export async function copyArtifact(from: string, to: string): Promise<{ linked: boolean }> {
  const state = { linked: true };
  try {
    if (!statSync(join(from, BUNDLE_FILE)).isFile()) throw new Error(`${BUNDLE_FILE} is not a file`);
    if (existsSync(to)) await rm(to, { recursive: true, force: true });
    await copyTree(from, to, state);
  } catch (err) {
    throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not give the instance its copy of ${from}: ${err instanceof Error ? err.message : String(err)}`, {
      hint: "the version's folder is gone or unreadable; deploy the function again",
      cause: err,
    });
  }
  return state;
}

// --- internal ---

/**
 * Entries (files and folders) placed synchronously before the rest goes through the thread
 * pool. Each sync call is one short syscall, and awaiting each made placing a 9-file folder
 * take ~1.5 ms on the cell path (sync: ~0.2 ms); but 10,000 files held forge's event loop
 * (every tenant's requests) for ~240 ms. Measured (linking, 2 CPUs): 200 entries sync ~3 ms,
 * async ~10 ms; so up to 200 the loop is held for at most a few ms, past it the copy costs
 * more in total but the loop never waits on it.
 */
const SYNC_ENTRIES = 200;

/** Filesystem calls in flight at once for the asynchronous rest of a large folder. */
const CONCURRENCY = 16;

/** One thing to place: a folder to make and fill, or a file to link (or copy). */
interface Placement {
  folder: boolean;
  source: string;
  target: string;
}

async function copyTree(from: string, to: string, state: { linked: boolean }): Promise<void> {
  const todo: Placement[] = [{ folder: true, source: from, target: to }];
  // 1. small folders (most functions) synchronously, as the cell path wants; copies of
  //    files (of any size) are left to the thread pool
  for (let budget = SYNC_ENTRIES; budget > 0 && state.linked; budget--) {
    const next = todo.pop();
    if (next === undefined) return;
    placeSync(next, todo, state);
  }
  // 2. the rest through the thread pool, a few calls at a time
  await drain(todo, state);
}

/** Makes a folder (queueing what it holds) or links a file; a file that cannot be linked goes back on `todo`. */
function placeSync(item: Placement, todo: Placement[], state: { linked: boolean }): void {
  if (item.folder) {
    mkdirSync(item.target);
    chmodSync(item.target, 0o755); // whatever forge's umask
    queueChildren(item, readdirSync(item.source, { withFileTypes: true }), todo);
    return;
  }
  try {
    linkSync(item.source, item.target);
  } catch (err) {
    if (!cannotLinkHere(err)) throw err;
    state.linked = false; // once one link fails for the filesystem's sake, copy the rest
    todo.push(item);
  }
}

async function place(item: Placement, todo: Placement[], state: { linked: boolean }): Promise<void> {
  if (item.folder) {
    await mkdir(item.target);
    await chmod(item.target, 0o755);
    queueChildren(item, await readdir(item.source, { withFileTypes: true }), todo);
    return;
  }
  if (state.linked) {
    try {
      await link(item.source, item.target);
      return;
    } catch (err) {
      if (!cannotLinkHere(err)) throw err;
      state.linked = false;
    }
  }
  await copyFile(item.source, item.target);
  await chmod(item.target, readOnlyMode((await stat(item.source)).mode));
}

/** Runs `place` over `todo` (which grows as folders are read), CONCURRENCY at a time; after a failure, waits for those in flight, then throws it. */
function drain(todo: Placement[], state: { linked: boolean }): Promise<void> {
  return new Promise((resolve, reject) => {
    let running = 0;
    let failure: { err: unknown } | undefined;
    const pump = (): void => {
      while (failure === undefined && running < CONCURRENCY) {
        const next = todo.pop();
        if (next === undefined) break;
        running++;
        place(next, todo, state).then(settled, (err: unknown) => {
          failure ??= { err };
          settled();
        });
      }
      if (running > 0) return;
      if (failure) reject(failure.err);
      else resolve();
    };
    const settled = (): void => {
      running--;
      pump();
    };
    pump();
  });
}

function queueChildren(folder: Placement, entries: Dirent[], todo: Placement[]): void {
  for (const entry of entries) {
    // an artifact holds no links, sockets or devices
    if (!entry.isDirectory() && !entry.isFile()) continue;
    todo.push({ folder: entry.isDirectory(), source: join(folder.source, entry.name), target: join(folder.target, entry.name) });
  }
}

/** The link failed because of where the files are (another filesystem, no hard links there), not what they are. */
function cannotLinkHere(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "EXDEV" || code === "EPERM" || code === "EMLINK" || code === "ENOTSUP";
}

function readOnlyMode(sourceMode: number): number {
  return (sourceMode & 0o111) !== 0 ? 0o555 : 0o444;
}
