/**
 * What instances run (the bun or node binary, the shim) made reachable by instances of uids
 * of their own, wherever forge is installed. Cloned into root's home folder (mode 0700, the
 * usual setup on a VM or in a container), forge's node_modules and runtimes/ are closed to
 * every other uid: an instance could not even be executed. Such files are given to instances
 * as copies (hard links where the file system allows, so a 100 MB binary costs nothing) in a
 * runtime folder they can reach:
 *
 *   1. `<dataDir>/runtime`, when others may pass through the folders above the data dir;
 *   2. else `/var/lib/forge/runtime-<owner>` (root's, on disk);
 *   3. else `<tmpdir>/forge-runtime-<owner>`, used only when it is root's and closed to writes
 *      by others (a folder someone else made there first could hold their own "bun").
 *
 * A folder outside the data dir is this run's: removed on dispose, made again at the next start.
 */
import { constants, lstatSync, realpathSync, statSync } from "node:fs";
import { chmod, copyFile, link, mkdir, mkdtemp, rename, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import type { ConsolaInstance } from "consola";

/** What an instance does with a file: runs it (a binary) or reads it (a script). */
export type Need = "exec" | "read";

const OTHERS: Record<Need, number> = { exec: constants.S_IXOTH, read: constants.S_IROTH };

/** True when others may pass through `dir` and every folder above it. */
export function traversable(dir: string): boolean {
  for (let d = dir; ; d = dirname(d)) {
    try {
      if ((statSync(d).mode & constants.S_IXOTH) === 0) return false;
    } catch {
      return false;
    }
    if (dirname(d) === d) return true;
  }
}

/**
 * True when a uid that neither owns `path` nor is in its group (an instance's) may reach
 * it: pass through every folder on the way (the link's and, for a symbolic link, its
 * target's) and `need` the file.
 */
export function reachableByOthers(path: string, need: Need): boolean {
  let real: string;
  try {
    real = realpathSync(path);
    if ((statSync(real).mode & OTHERS[need]) === 0) return false;
  } catch {
    return false;
  }
  return traversable(dirname(path)) && traversable(dirname(real));
}

export interface RuntimeCopiesOptions {
  dataDir: string;
  /** Names this data dir's folders outside it. */
  owner: string;
  logger: ConsolaInstance;
  /** Root of the system folder for the second choice. Default /var/lib/forge. */
  systemDir?: string;
}

/** Paths instances can reach, copying into the runtime folder what they cannot (each file once). */
export class RuntimeCopies {
  private folder: Promise<{ dir: string; inDataDir: boolean }> | undefined;
  private readonly copies = new Map<string, Promise<string>>();

  constructor(private readonly o: RuntimeCopiesOptions) {}

  /**
   * `path` itself when instances reach it; else its copy in the runtime folder. When no copy
   * can be made, `path` with a warning saying what to do (instances of it will fail to start).
   */
  reach(path: string, need: Need): Promise<string> {
    if (reachableByOthers(path, need)) return Promise.resolve(path);
    let copy = this.copies.get(path);
    if (!copy) {
      copy = this.place(path, need).catch((err: unknown) => {
        this.copies.delete(path);
        this.o.logger.warn(
          `instances run as uids of their own and cannot reach ${path} (a folder above it is closed to others), and forge could not copy it where they can:`,
          err,
          "\nMake the folders above it passable (chmod o+x on each), or install forge in a folder others may enter (/opt, /srv).",
        );
        return path;
      });
      this.copies.set(path, copy);
    }
    return copy;
  }

  /** Removes the runtime folder when it is outside the data dir (this run's). */
  async dispose(): Promise<void> {
    const folder = await this.folder?.catch(() => undefined);
    if (folder && !folder.inDataDir) await rm(folder.dir, { recursive: true, force: true });
  }

  // --- internal ---

  private async place(path: string, need: Need): Promise<string> {
    const { dir } = await (this.folder ??= this.makeFolder());
    const dest = join(dir, basename(path));
    const src = realpathSync(path);
    // Already in the runtime folder (a file forge built there, before the folder was opened).
    if (src === dest) return dest;
    const part = `${dest}.${process.pid}.part`;
    await rm(part, { force: true });
    // A hard link shares the file's mode: enough when others already have what they need of it.
    const linked = (statSync(src).mode & OTHERS[need]) !== 0 && (await link(src, part).then(() => true, () => false));
    if (!linked) {
      await copyFile(src, part);
      await chmod(part, need === "exec" ? 0o755 : 0o644);
    }
    // Renamed into place: an instance never starts on half a file.
    await rename(part, dest);
    this.o.logger.debug(`instances run ${dest} (${linked ? "a hard link" : "a copy"} of ${path}, which their uids cannot reach)`);
    return dest;
  }

  private async makeFolder(): Promise<{ dir: string; inDataDir: boolean }> {
    const { dataDir, owner } = this.o;
    if (traversable(dirname(dataDir))) {
      const dir = join(dataDir, "runtime");
      await mkdir(dir, { recursive: true });
      // Instances pass through the data dir (not list it), as they do to their own folders.
      await Promise.all([chmod(dataDir, 0o711), chmod(dir, 0o755)]);
      return { dir, inDataDir: true };
    }
    const system = this.o.systemDir ?? "/var/lib/forge";
    if (traversable(dirname(system))) {
      const dir = join(system, `runtime-${owner}`);
      await mkdir(dir, { recursive: true, mode: 0o755 });
      await Promise.all([chmod(system, 0o755), chmod(dir, 0o755)]);
      if (safeFolder(system) && safeFolder(dir)) return { dir, inDataDir: false };
    }
    const named = join(tmpdir(), `forge-runtime-${owner}`);
    await mkdir(named, { mode: 0o755 }).catch(() => {});
    if (safeFolder(named)) {
      await chmod(named, 0o755);
      return { dir: named, inDataDir: false };
    }
    const dir = await mkdtemp(join(tmpdir(), "forge-runtime-"));
    await chmod(dir, 0o755);
    return { dir, inDataDir: false };
  }
}

/** A real folder of this process's user that nobody else may write to. */
function safeFolder(dir: string): boolean {
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}
