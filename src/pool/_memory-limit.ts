/**
 * Holding the process driver's instances to their memoryMb, in one of two ways chosen when
 * the driver starts:
 *
 * - A memory cgroup per instance, when forge runs as root and can write the cgroup file
 *   system: the kernel stops an instance that goes over, as Docker's limit does. v2: a
 *   subtree at the root of the unified hierarchy (memory.max, memory.swap.max 0,
 *   memory.oom.group so the function's own children go with it); v1: one under the memory
 *   hierarchy (memory.limit_in_bytes, and memory.memsw.limit_in_bytes where swap is
 *   accounted). Each lives at `<hierarchy>/forge/<owner>/<instance id>`, `owner` naming the
 *   data dir, so forges sharing a machine never touch each other's live cgroups. At start,
 *   what an earlier run of the same data dir left is removed (and what still ran in it
 *   killed), and so are empty cgroups killed forges of other data dirs left (STALE_MS).
 * - Else a watch of each instance's resident memory, one timer for all; an instance over its
 *   limit is stopped. Softer: a burst between two looks goes unseen until the next, and
 *   processes the function starts are not counted.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import { mkdir, readFile, rmdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError } from "../errors.ts";
import { cgroupWorkingSet } from "./_memory-usage.ts";

/** How memoryMb is held: "auto" is a cgroup when forge is root and can write one, else "rss". */
export type MemoryLimitMode = "auto" | "cgroup" | "rss" | "off";

/** What a driver ended up with. */
export type MemoryEnforcement = "cgroup v2" | "cgroup v1" | "rss watch" | "off";

export interface MemoryLimiter {
  readonly kind: MemoryEnforcement;
  /** Before the spawn: the instance's limit is made ready (its cgroup created). */
  prepare(id: string, limitMb: number): Promise<void>;
  /**
   * Right after the spawn, synchronously: the process goes under its limit. The shim takes
   * tens of milliseconds to start before it loads any code of the function, so the function
   * never runs outside it. Throws when the process cannot be moved.
   */
  enter(id: string, pid: number): void;
  /** Changes a running instance's limit (a stem cell specialized for a function). */
  setLimit(id: string, limitMb: number): Promise<void>;
  /** After the process was killed: did the kernel kill it for memory? (The watch reports through onOver instead.) */
  oomKilled(id: string): boolean;
  /**
   * Its cgroup's working set in bytes (usage minus inactive file cache); undefined when the
   * instance has no cgroup (the watch, no limits) or it is gone: the driver measures its processes then.
   */
  workingSet(id: string): Promise<number | undefined>;
  /** The instance is gone: its cgroup goes, with any process the function left in it. */
  release(id: string): Promise<void>;
  dispose(): Promise<void>;
}

export interface MemoryLimiterOptions {
  mode: MemoryLimitMode;
  /** Names this forge's cgroups (a hash of its data dir). */
  owner: string;
  /** Whether forge runs as root ("auto" tries a cgroup only then). */
  root: boolean;
  /** The watch found an instance over its limit: the driver stops it. */
  onOver(id: string, usedMb: number, limitMb: number): void;
  logger: ConsolaInstance;
  /** How often the watch reads resident memory, ms. Default RSS_EVERY_MS. */
  rssEveryMs?: number;
  /** /proc/self/cgroup and /proc/mounts, for tests. */
  proc?: { selfCgroup: string; mounts: string };
}

/**
 * How often the watch looks: an instance allocating ~1 GB/s gets ~250 MB past its limit
 * before it is seen; reading /proc/<pid>/status costs ~20 us per instance.
 */
export const RSS_EVERY_MS = 250;

const MIB = 1024 * 1024;

/**
 * Picks how limits are held and sets it up. "cgroup" without a writable cgroup throws;
 * "auto" falls back to the watch, saying why at debug level.
 */
export function createMemoryLimiter(o: MemoryLimiterOptions): MemoryLimiter {
  if (o.mode === "off") return NO_LIMITS;
  if (o.mode === "cgroup" || (o.mode === "auto" && o.root)) {
    try {
      return CgroupLimiter.open(o.owner, o.logger, o.proc);
    } catch (err) {
      if (o.mode === "cgroup") {
        throw new ForgeError(ErrorCode.DriverUnavailable, 503, `no memory cgroup forge can write: ${err instanceof Error ? err.message : String(err)}`, {
          hint: "run forge as root on a machine whose cgroup file system (/sys/fs/cgroup) is mounted writable, or let forge watch resident memory instead",
          cause: err,
        });
      }
      o.logger.debug("no memory cgroup forge can write; watching resident memory instead:", err);
    }
  }
  return new RssWatch(o.onOver, o.rssEveryMs ?? RSS_EVERY_MS);
}

export interface MemoryHierarchy {
  version: 1 | 2;
  /** Where the hierarchy holding the memory controller is mounted. */
  mount: string;
}

/**
 * Where the memory controller is, from /proc/self/cgroup and /proc/mounts: v1 when a v1
 * hierarchy has it (a hybrid setup binds it there, and the unified hierarchy then lacks
 * it), else v2 when the unified hierarchy's root offers it (`controllers(mount)` reads its
 * cgroup.controllers).
 */
export function findMemoryHierarchy(selfCgroup: string, mounts: string, controllers: (mount: string) => string | undefined): MemoryHierarchy | undefined {
  const v1 = selfCgroup.split("\n").some((line) => line.split(":")[1]?.split(",").includes("memory"));
  for (const line of mounts.split("\n")) {
    const [, where, type, options] = line.split(" ");
    if (!where || !type) continue;
    const mount = where.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
    if (v1 && type === "cgroup" && options?.split(",").includes("memory")) return { version: 1, mount };
    if (!v1 && type === "cgroup2" && controllers(mount)?.split(/\s+/).includes("memory")) return { version: 2, mount };
  }
  return undefined;
}

/** Memory of a process that is its own, MiB: anonymous and shared-memory pages (undefined once it is gone). */
export function residentMb(pid: number): number | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return undefined;
  }
  // Not VmRSS: ~31 of bun's ~34 MB resident at start are its binary's pages, shared by every
  // instance and dropped under pressure; a cgroup does not charge them to the instance either.
  const anon = kb(status, RSS_ANON);
  const kib = anon === undefined ? kb(status, VM_RSS) : anon + (kb(status, RSS_SHMEM) ?? 0);
  return kib === undefined ? undefined : kib / 1024;
}

const RSS_ANON = /^RssAnon:\s+(\d+) kB/m;
const RSS_SHMEM = /^RssShmem:\s+(\d+) kB/m;
const VM_RSS = /^VmRSS:\s+(\d+) kB/m;

function kb(status: string, field: RegExp): number | undefined {
  const m = field.exec(status);
  return m ? Number(m[1]) : undefined;
}

// --- internal ---

const NO_LIMITS: MemoryLimiter = {
  kind: "off",
  prepare: async () => {},
  enter: () => {},
  setLimit: async () => {},
  oomKilled: () => false,
  workingSet: async () => undefined,
  release: async () => {},
  dispose: async () => {},
};

/** The files of a version's memory controller forge uses. */
interface CgroupFiles {
  limit: string;
  /** Swap counted with memory (v1: the total, v2: swap alone); absent where not accounted. */
  swap: string;
  /** The file with the `oom_kill <n>` line. */
  events: string;
}

const FILES: Record<1 | 2, CgroupFiles> = {
  1: { limit: "memory.limit_in_bytes", swap: "memory.memsw.limit_in_bytes", events: "memory.oom_control" },
  2: { limit: "memory.max", swap: "memory.swap.max", events: "memory.events" },
};

const OOM_KILL = /^oom_kill (\d+)$/m;

/**
 * An empty cgroup made longer ago than this was left by a forge that was killed: an
 * instance's cgroup lives ~1 ms between made and entered, and goes within ~1 s of its
 * process's exit. Only such cgroups of other data dirs are removed at start (another forge
 * may be running on them); the kernel refuses to remove one that holds a process anyway.
 */
const STALE_MS = 60_000;

/** A memory cgroup per instance under `<hierarchy>/forge/<owner>`. */
class CgroupLimiter implements MemoryLimiter {
  readonly kind: MemoryEnforcement;
  private readonly files: CgroupFiles;
  private readonly forgeDir: string;
  private readonly dir: string;
  private readonly limits = new Map<string, number>();
  private readonly swapAccounted: boolean;
  private readonly swept: Promise<void>;

  private constructor(
    private readonly hierarchy: MemoryHierarchy,
    owner: string,
    logger: ConsolaInstance,
  ) {
    this.kind = `cgroup v${hierarchy.version}`;
    this.files = FILES[hierarchy.version];
    this.forgeDir = join(hierarchy.mount, "forge");
    this.dir = join(this.forgeDir, owner);
    this.makeDirs();
    // Some setups let a cgroup be made but no limit be written (a subtree without the
    // controller): found out here, not at every instance's start.
    const probe = join(this.dir, `probe-${process.pid}`);
    mkdirSync(probe);
    try {
      writeFileSync(join(probe, this.files.limit), String(64 * MIB));
    } finally {
      rmdirSync(probe);
    }
    this.swapAccounted = existsSync(join(this.dir, this.files.swap));
    this.swept = this.sweep(logger);
  }

  /** Finds the memory hierarchy and makes forge's cgroups in it; throws when there is none or they cannot be written. */
  static open(owner: string, logger: ConsolaInstance, proc?: { selfCgroup: string; mounts: string }): CgroupLimiter {
    const selfCgroup = proc?.selfCgroup ?? readFileSync("/proc/self/cgroup", "utf8");
    const mounts = proc?.mounts ?? readFileSync("/proc/mounts", "utf8");
    const found = findMemoryHierarchy(selfCgroup, mounts, (mount) => readOr(join(mount, "cgroup.controllers")));
    if (!found) throw new Error("no cgroup hierarchy has the memory controller");
    return new CgroupLimiter(found, owner, logger);
  }

  /** `<hierarchy>/forge/<owner>` (mkdir in a cgroup file system makes a cgroup, its control files with it). */
  private makeDirs(): void {
    mkdirSync(this.dir, { recursive: true });
    // v2: the memory controller reaches a cgroup only when each one above hands it down.
    if (this.hierarchy.version === 2) for (const d of [this.hierarchy.mount, this.forgeDir, this.dir]) enableMemory(d);
  }

  /**
   * What earlier runs left: every cgroup of this data dir (forge was killed; what still runs
   * in them is killed), and empty ones of other data dirs made over STALE_MS ago.
   */
  private async sweep(logger: ConsolaInstance): Promise<void> {
    const version = this.hierarchy.version;
    const own = subdirs(this.dir).map((cg) => removeCgroup(cg, version).catch((err: unknown) => logger.warn(`could not remove the stale cgroup ${cg}:`, err)));
    const before = Date.now() - STALE_MS;
    const old = (cg: string) => {
      try {
        return statSync(cg).mtimeMs < before;
      } catch {
        return false;
      }
    };
    for (const other of subdirs(this.forgeDir)) {
      if (other === this.dir) continue;
      const otherOld = old(other); // before its cgroups go: removing one touches it
      for (const cg of subdirs(other)) if (old(cg)) await rmdir(cg).catch(() => {});
      if (otherOld) await rmdir(other).catch(() => {}); // refused while it has cgroups
    }
    await Promise.all(own);
  }

  async prepare(id: string, limitMb: number): Promise<void> {
    const cg = join(this.dir, id);
    await mkdir(cg).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "ENOENT") throw err;
      // Our folder was swept by a forge starting beside this one, taking it for a killed one's
      // (this forge had no instance for a minute): made again.
      this.makeDirs();
      return mkdir(cg);
    });
    try {
      await this.write(id, limitMb, undefined);
      // The function's own children go with it when one of them is killed (v2; v1 has no such switch).
      if (this.hierarchy.version === 2) await writeFile(join(cg, "memory.oom.group"), "1");
      // v1 with swap not counted in the limit: no swapping either, or a process over it would
      // be swapped out rather than stopped (a no-op on a machine without swap).
      else if (!this.swapAccounted) await writeFile(join(cg, "memory.swappiness"), "0").catch(() => {});
    } catch (err) {
      await rmdir(cg).catch(() => {});
      throw err;
    }
    this.limits.set(id, limitMb);
  }

  enter(id: string, pid: number): void {
    writeFileSync(join(this.dir, id, "cgroup.procs"), String(pid));
  }

  async setLimit(id: string, limitMb: number): Promise<void> {
    const before = this.limits.get(id);
    if (before === undefined) return;
    await this.write(id, limitMb, before);
    this.limits.set(id, limitMb);
  }

  oomKilled(id: string): boolean {
    const events = readOr(join(this.dir, id, this.files.events));
    const kills = events === undefined ? undefined : OOM_KILL.exec(events)?.[1];
    if (kills !== undefined) return Number(kills) > 0;
    // v1 before Linux 4.13 counts no kills: the limit having been hit is the best sign left.
    return Number(readOr(join(this.dir, id, "memory.failcnt")) ?? 0) > 0;
  }

  workingSet(id: string): Promise<number | undefined> {
    if (!this.limits.has(id)) return Promise.resolve(undefined);
    return cgroupWorkingSet(join(this.dir, id), this.hierarchy.version);
  }

  async release(id: string): Promise<void> {
    this.limits.delete(id);
    await removeCgroup(join(this.dir, id), this.hierarchy.version);
  }

  async dispose(): Promise<void> {
    await this.swept;
    // Empty once its instances are gone; another start of this data dir makes it again.
    await rmdir(this.dir).catch(() => {});
  }

  /** Writes the limit, and swap's where accounted, in the order the kernel accepts. */
  private async write(id: string, limitMb: number, beforeMb: number | undefined): Promise<void> {
    const cg = join(this.dir, id);
    const bytes = String(limitMb * MIB);
    if (!this.swapAccounted) return writeFile(join(cg, this.files.limit), bytes);
    if (this.hierarchy.version === 2) {
      await writeFile(join(cg, this.files.limit), bytes);
      await writeFile(join(cg, this.files.swap), "0");
      return;
    }
    // v1: memory + swap may never be below memory alone; raise it first, lower it last.
    if (beforeMb !== undefined && limitMb > beforeMb) {
      await writeFile(join(cg, this.files.swap), bytes);
      await writeFile(join(cg, this.files.limit), bytes);
    } else {
      await writeFile(join(cg, this.files.limit), bytes);
      await writeFile(join(cg, this.files.swap), bytes);
    }
  }
}

/** The cgroups right below `dir` (its folders). */
function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => join(dir, entry.name));
  } catch {
    return [];
  }
}

function readOr(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** v2: lets the children of `dir` have the memory controller (a no-op when they already may). */
function enableMemory(dir: string): void {
  const control = join(dir, "cgroup.subtree_control");
  if (readOr(control)?.split(/\s+/).includes("memory")) return;
  writeFileSync(control, "+memory");
}

/** How long removing a cgroup waits for the processes it kills to be gone: 20 tries, 25 ms apart. */
const REMOVE_TRIES = 20;
const REMOVE_RETRY_MS = 25;

/** Removes a cgroup, killing what still runs in it (a process the function left behind). */
async function removeCgroup(cg: string, version: 1 | 2): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await rmdir(cg);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      if (code !== "EBUSY" || attempt >= REMOVE_TRIES) throw err;
    }
    await killAll(cg, version);
    await new Promise((r) => setTimeout(r, REMOVE_RETRY_MS));
  }
}

async function killAll(cg: string, version: 1 | 2): Promise<void> {
  if (version === 2 && existsSync(join(cg, "cgroup.kill"))) return writeFile(join(cg, "cgroup.kill"), "1");
  const procs = await readFile(join(cg, "cgroup.procs"), "utf8").catch(() => "");
  for (const pid of procs.split("\n")) {
    if (!pid) continue;
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
}

/** Resident memory of each instance, read every `everyMs` on one timer; one over its limit is reported once. */
export class RssWatch implements MemoryLimiter {
  readonly kind = "rss watch";
  private readonly watched = new Map<string, { limitMb: number; pid?: number }>();
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly onOver: (id: string, usedMb: number, limitMb: number) => void,
    private readonly everyMs: number,
    private readonly read: (pid: number) => number | undefined = residentMb,
  ) {}

  async prepare(id: string, limitMb: number): Promise<void> {
    this.watched.set(id, { limitMb });
  }

  enter(id: string, pid: number): void {
    const w = this.watched.get(id);
    if (!w) return;
    w.pid = pid;
    this.timer ??= setInterval(() => this.check(), this.everyMs);
    this.timer.unref?.();
  }

  async setLimit(id: string, limitMb: number): Promise<void> {
    const w = this.watched.get(id);
    if (w) w.limitMb = limitMb;
  }

  oomKilled(): boolean {
    return false;
  }

  async workingSet(): Promise<number | undefined> {
    return undefined;
  }

  async release(id: string): Promise<void> {
    this.watched.delete(id);
    if (this.watched.size === 0) this.stopTimer();
  }

  async dispose(): Promise<void> {
    this.watched.clear();
    this.stopTimer();
  }

  /** One look at every instance (the timer's; tests call it). */
  check(): void {
    for (const [id, w] of this.watched) {
      if (w.pid === undefined) continue;
      const used = this.read(w.pid);
      if (used === undefined || used <= w.limitMb) continue;
      this.watched.delete(id);
      this.onOver(id, used, w.limitMb);
    }
  }

  private stopTimer(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
