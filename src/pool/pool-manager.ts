/**
 * PoolManager: every function's pool, the stem cells, the memory budget and the
 * keep-alive sweep. It is the pool's PoolHost: the one place that talks to the driver.
 *
 * Stem cells are generic instances started ahead of any deploy. A function with no free
 * instance takes a cell, sends it its bundle over the cell's socket, and the cell becomes
 * that function's instance for good; cells refill in the background. A true cold start
 * happens only when no cell is left.
 *
 * Cells come in kinds: a runtime (bun, node) and the networks the cell already sits on. The
 * configured counts (FORGE_STEM_CELLS, per runtime) are kept on the default networks
 * (`cellNetworks`: on docker, forge's egress network); a function whose networks differ (bound
 * to a database, or `"network": "none"`) gets one cell of its own kind kept while it is
 * active, since joining a network at specialization costs far more than a cell start.
 */
import { randomBytes } from "node:crypto";
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError } from "../errors.ts";
import { isShimRuntime, type Driver, type ExitInfo, type InstanceHandle, type ShimRuntime } from "./driver.ts";
import { realClock, type Clock } from "./clock.ts";
import { EXIT_NOTICE_MS, FunctionPool, type PoolHost, type PoolInstance } from "./function-pool.ts";
import { drain, health, specialize } from "./instance-client.ts";
import { fixedKeepAlive, type KeepAliveInfo, type KeepAlivePolicy, type KeepAliveWindows } from "./keep-alive.ts";
import { CELLS, MemoryLedger } from "./memory-ledger.ts";
import { UpstreamPool } from "./upstream.ts";
import type { Lease, PoolSnapshot, PoolSpec, StartCounts, StartKind } from "./types.ts";

export interface PoolManagerOptions {
  driver: Driver;
  logger: ConsolaInstance;
  /** Time source; a FakeClock in decision tests. Default the real clock. */
  clock?: Clock;
  /**
   * Generic instances kept ready per runtime (a number: bun's). A range grows with the rate
   * at which cells are taken and shrinks back when it falls. Default { bun: 2 }.
   */
  stemCells?: number | Partial<Record<ShimRuntime, number | CellRange>>;
  /** Networks default cells sit on (docker: forge's egress network). Default none. */
  cellNetworks?: readonly string[];
  /** Image bun cells run (docker driver). */
  runtimeImage?: string;
  /** Image node cells run (docker driver). */
  nodeImage?: string;
  /** Memory limit of a cell before it is specialized, MiB. Default 128. */
  cellMemoryMb?: number;
  /** Cap on the sum of instance memory, cells included, MiB. Default 4096. */
  memoryBudgetMb?: number;
  /**
   * What the budget counts: "measured" (default): an instance's resident memory plus
   * `memoryHeadroomMb`, at most its limit (its limit until first measured; needs a driver that
   * measures); "declared": its limit (memoryMb).
   */
  memoryAccounting?: "measured" | "declared";
  /** Added to an instance's measured resident memory, MiB. Default 16. */
  memoryHeadroomMb?: number;
  /** How often instances' memory is measured, ms. Default 500. */
  memorySampleMs?: number;
  /** Cells taken within this window make the cell count grow (a range in stemCells), ms. Default 10000. */
  cellWindowMs?: number;
  /** Default: fixed TTL of 10 minutes. */
  keepAlive?: KeepAlivePolicy;
  /** How often idle instances are looked for, ms. Default 1000. */
  sweepEveryMs?: number;
  /** Longest wait for a free slot, ms. Default 30000. */
  queueTimeoutMs?: number;
  /** Requests waiting per function before 429. Default 1000. */
  maxQueue?: number;
  /** Default 1.0. */
  targetUtilization?: number;
  /** Longest a stem cell may take to load a function's module, ms. Default 30000. */
  startTimeoutMs?: number;
  /** AWS_REGION of Lambda-style functions. Default us-east-1. */
  region?: string;
  /** Reads a bundle to send to a cell (cached per version). Default Bun.file(path).text(). */
  readBundle?: (path: string) => Promise<string>;
}

/**
 * How long a refill waits after a cell was taken: long enough for the first response of
 * the specialized cell (~3 ms) to go out before a container start competes for the CPU
 * (measured on docker: p50 of a cell start 8-14 ms with the refill at once, ~4 ms after).
 */
const CELL_REFILL_DELAY_MS = 25;

const MIB = 1024 * 1024;

/** A sweep that stops every idle instance above minWarm now. */
const RETIRE_NOW: KeepAliveWindows = { prewarmMs: 0, keepAliveMs: 0, source: "fixed" };

/** How long a suspect instance has to answer its health check (a busy one answers in ms). */
const HEALTH_CHECK_MS = 5_000;

/** How long a retired instance may go on with pending ctx.waitUntil work (Workers allows 30 s). */
const WAIT_UNTIL_GRACE_MS = 30_000;

/** What activating a version found out. */
export interface Activation {
  /** How the module is called (null for runtime "docker"). */
  kind: "fetch" | "lambda" | null;
  /** Requests one instance serves at once, as the version now runs. */
  concurrency: number;
}

function loadFailed(spec: PoolSpec, err: unknown): ForgeError {
  const why = err instanceof Error ? err.message : String(err);
  return new ForgeError(ErrorCode.LoadFailed, 400, `${spec.function} v${spec.version} did not start: ${why}`, {
    hint: spec.runtime === "docker" ? "the container must serve HTTP on $PORT; see the lines above" : "fix the error above (run the module locally to check) and deploy again",
    cause: err,
  });
}

interface Cell {
  handle: InstanceHandle;
  createdAt: number;
  /** What the budget counts it at, MiB (the cell limit until measured). */
  countedMb: number;
}

/** How many cells of a runtime to keep: at least min, up to max as cells are taken. */
export interface CellRange {
  min: number;
  max: number;
}

/** What the pool's memory looks like (forge info, metrics). */
export interface MemoryStats {
  /** The cap, MiB. */
  budgetMb: number;
  /** What the budget counts now, MiB (measured + headroom, or declared). */
  countedMb: number;
  /** Sum of the limits (memoryMb) of live instances and cells, MiB. */
  declaredMb: number;
  /** Resident memory last measured, instances and cells, MiB (undefined: the driver does not measure). */
  residentMb: number | undefined;
  /** The highest countedMb so far. */
  peakMb: number;
  accounting: "measured" | "declared";
  headroomMb: number;
}

/** What a cell is ready for: its runtime and the networks it sits on (sorted). */
interface CellKind {
  runtime: ShimRuntime;
  networks: readonly string[];
}

/** The cells of one kind: those ready, those starting, and how many to keep. */
interface Shelf {
  kind: CellKind;
  ready: Cell[];
  starting: number;
  /** How many to keep now: min plus the cells taken within the window, at most max. */
  target: number;
  min: number;
  max: number;
  /** When cells were taken, oldest first (within cellWindowMs). */
  takes: number[];
}

function cellKey(runtime: ShimRuntime, networks: readonly string[] = []): string {
  return `${runtime}|${[...networks].sort().join(",")}`;
}

export class PoolManager implements PoolHost, AsyncDisposable {
  readonly clock: Clock;
  readonly queueTimeoutMs: number;
  readonly maxQueue: number;
  readonly targetUtilization: number;
  private readonly driver: Driver;
  private readonly logger: ConsolaInstance;
  private readonly keepAlive: KeepAlivePolicy;
  private readonly stemCellTargets: Partial<Record<ShimRuntime, CellRange>>;
  private readonly cellNetworks: readonly string[];
  private readonly nodeImage: string | undefined;
  private readonly cellMemoryMb: number;
  private readonly budgetMb: number;
  private readonly accounting: "measured" | "declared";
  private readonly headroomMb: number;
  private readonly memorySampleMs: number;
  private readonly cellWindowMs: number;
  /** What the budget counts, by function (and the cells), and its integral over time. */
  private readonly ledger: MemoryLedger;
  /** Resident memory at the last measure, MiB (instances and cells). */
  private residentMb: number | undefined;
  /** The most a function's version was measured at, MiB: what its next instance is counted at until measured. */
  private readonly learnedMb = new Map<string, { version: number; mb: number }>();
  private cellLearnedMb: number | undefined;
  private sampleTimer: { cancel(): void } | undefined;
  private sampleFailed = false;
  private readonly runtimeImage: string | undefined;
  private readonly readBundle: (path: string) => Promise<string>;
  private readonly region: string;
  private readonly startTimeoutMs: number;
  private readonly sweepEveryMs: number;

  /** Active pool per function. */
  private readonly active = new Map<string, FunctionPool>();
  /** Pools being drained after a version switch. */
  private readonly draining = new Set<FunctionPool>();
  /** Which pool owns an instance, by driver id, and the pool's key for it (for exits). */
  private readonly owner = new Map<string, { pool: FunctionPool; poolId: string }>();
  /** Health checks that failed, waiting for the instance's exit notice (by driver id). */
  private readonly exitNoticed = new Map<string, () => void>();
  /** Exit notices of instances that were still being specialized (read by cellExit; a few at most). */
  private readonly recentExits = new Map<string, ExitInfo>();
  /** Stem cells by kind (cellKey). */
  private readonly shelves = new Map<string, Shelf>();
  private readonly starts = new Map<string, StartCounts>();
  private readonly bundles = new Map<string, Promise<string>>();
  private sweepTimer: { cancel(): void } | undefined;
  /** Kept-alive connections for specializing cells: one is opened as a cell becomes ready. */
  private readonly control = new UpstreamPool({ maxIdle: 1 });
  private readonly cellReadyListeners = new Set<(handle: InstanceHandle) => void>();
  private unsubscribeExit: (() => void) | undefined;
  private disposed = false;

  constructor(options: PoolManagerOptions) {
    this.driver = options.driver;
    this.logger = options.logger;
    this.clock = options.clock ?? realClock;
    const cells = options.stemCells ?? 2;
    const asRange = (c: number | CellRange): CellRange => (typeof c === "number" ? { min: c, max: c } : { min: c.min, max: Math.max(c.min, c.max) });
    this.stemCellTargets =
      typeof cells === "number" ? { bun: asRange(cells) } : Object.fromEntries(Object.entries(cells).map(([runtime, c]) => [runtime, asRange(c as number | CellRange)]));
    this.cellNetworks = [...(options.cellNetworks ?? [])].sort();
    this.runtimeImage = options.runtimeImage;
    this.nodeImage = options.nodeImage;
    this.cellMemoryMb = options.cellMemoryMb ?? 128;
    this.budgetMb = options.memoryBudgetMb ?? 4096;
    this.accounting = options.memoryAccounting ?? "measured";
    this.headroomMb = options.memoryHeadroomMb ?? 16;
    this.memorySampleMs = options.memorySampleMs ?? 500;
    this.cellWindowMs = options.cellWindowMs ?? 10_000;
    this.ledger = new MemoryLedger(this.clock);
    this.retarget();
    this.keepAlive = options.keepAlive ?? fixedKeepAlive(10 * 60_000);
    this.sweepEveryMs = options.sweepEveryMs ?? 1000;
    this.queueTimeoutMs = options.queueTimeoutMs ?? 30_000;
    this.maxQueue = options.maxQueue ?? 1000;
    this.targetUtilization = options.targetUtilization ?? 1.0;
    this.readBundle = options.readBundle ?? ((p) => Bun.file(p).text());
    this.region = options.region ?? "us-east-1";
    this.startTimeoutMs = options.startTimeoutMs ?? 30_000;
  }

  /** Starts the stem cells and the keep-alive sweep. */
  start(): void {
    this.unsubscribeExit = this.driver.onExit((info) => this.onExit(info));
    this.refillCells();
    this.scheduleSweep();
    this.scheduleSample();
  }

  /**
   * Registers a listener for stem cells becoming ready (the gateway opens a connection to
   * each ahead of the request that will specialize it); returns an unsubscribe.
   */
  onCellReady(listener: (handle: InstanceHandle) => void): () => void {
    this.cellReadyListeners.add(listener);
    for (const shelf of this.shelves.values()) for (const cell of shelf.ready) listener(cell.handle);
    return () => this.cellReadyListeners.delete(listener);
  }

  /** The active pool of a function, if it has one. */
  pool(fn: string): FunctionPool | undefined {
    return this.active.get(fn);
  }

  /** Leases a slot on the function's active version. */
  acquire(fn: string, signal?: AbortSignal): Lease | Promise<Lease> {
    const pool = this.active.get(fn);
    if (!pool) {
      throw new ForgeError(ErrorCode.FunctionNotFound, 404, `function ${fn} has no active version`, {
        hint: "deploy it first: forge deploy ./" + fn,
      });
    }
    return pool.acquire(signal);
  }

  /**
   * Makes a version the active one with no failed request: the new pool is warmed (as many
   * instances as the old one had ready, at least minWarm, and at least one unless `verify`
   * is false) before traffic moves, then the old pool drains its in-flight and queued
   * requests and stops. When no instance of the new version starts, nothing moves: the
   * error (LoadFailed) carries why, and the old pool goes on serving.
   */
  async activate(spec: PoolSpec, options: { verify?: boolean } = {}): Promise<Activation> {
    this.assertLive();
    const old = this.active.get(spec.function);
    const next = new FunctionPool(spec, this);
    // At least one when verifying: a version serves only once an instance of it has loaded
    // the module. Restoring versions that already served after a restart starts none.
    const verify = options.verify ?? true;
    const warmCount = Math.max(verify ? 1 : 0, spec.minWarm, old ? Math.min(old.readyCount, spec.maxInstances) : 0);
    try {
      await next.warm(warmCount);
    } catch (err) {
      next.close(new ForgeError(ErrorCode.LoadFailed, 400, `${spec.function} v${spec.version} did not load`));
      // A function that never went live keeps no account (nor a memory-time series) once it gave its memory back.
      if (!this.active.has(spec.function)) this.ledger.forget(spec.function);
      // No room to try it (the memory budget is full) or forge is stopping: not the version's fault.
      // Nor is a runtime this forge cannot run (no node binary, no image for it).
      if (err instanceof ForgeError && (err.code === ErrorCode.ServiceUnavailable || err.code === ErrorCode.Disposed || err.code === ErrorCode.DriverUnavailable)) throw err;
      throw loadFailed(spec, err);
    }
    const kind = await this.kindOf(next);
    // A Lambda handler expects one event at a time per environment (module state is per event).
    if (kind === "lambda" && spec.lambdaConcurrency !== undefined) next.spec = { ...next.spec, concurrency: spec.lambdaConcurrency };
    if (this.disposed) {
      next.close(new ForgeError(ErrorCode.Disposed, 503, "forge is shutting down"));
      this.assertLive();
    }
    this.active.set(spec.function, next);
    this.ledger.keep(spec.function);
    this.retarget();
    this.refillCells();
    if (old) {
      this.draining.add(old);
      void old.drain().then(() => this.draining.delete(old));
    }
    return { kind, concurrency: next.spec.concurrency };
  }

  /** Applies config that needs no new instances (concurrency, minWarm, maxInstances, timeoutMs). */
  updateLive(fn: string, patch: Partial<Pick<PoolSpec, "concurrency" | "minWarm" | "maxInstances" | "timeoutMs">>): void {
    const pool = this.active.get(fn);
    if (!pool) return;
    pool.spec = { ...pool.spec, ...patch };
    pool.scale();
  }

  /** Stops a function's instances (delete). */
  async remove(fn: string): Promise<void> {
    const pool = this.active.get(fn);
    this.active.delete(fn);
    this.starts.delete(fn);
    this.ledger.forget(fn);
    this.keepAlive.forget(fn);
    this.learnedMb.delete(fn);
    this.retarget();
    pool?.close(new ForgeError(ErrorCode.FunctionNotFound, 404, `function ${fn} was deleted`, { hint: "deploy it again" }));
    for (const p of this.draining) if (p.function === fn) p.close(new ForgeError(ErrorCode.FunctionNotFound, 404, `function ${fn} was deleted`));
  }

  snapshot(fn: string): (PoolSnapshot & { starts: StartCounts }) | undefined {
    const pool = this.active.get(fn);
    if (!pool) return undefined;
    return { ...pool.snapshot(), starts: { ...(this.starts.get(fn) ?? { warm: 0, cell: 0, cold: 0 }) } };
  }

  stats(): {
    cells: number;
    cellsStarting: number;
    /** Cells kept now (adaptive: grows with the rate cells are taken). */
    cellsTarget: number;
    stopping: number;
    usedMb: number;
    budgetMb: number;
    pools: number;
    cellsByRuntime: Partial<Record<ShimRuntime, number>>;
  } {
    let cells = 0;
    let cellsStarting = 0;
    let cellsTarget = 0;
    const cellsByRuntime: Partial<Record<ShimRuntime, number>> = {};
    for (const shelf of this.shelves.values()) {
      cells += shelf.ready.length;
      cellsStarting += shelf.starting;
      cellsTarget += shelf.target;
      cellsByRuntime[shelf.kind.runtime] = (cellsByRuntime[shelf.kind.runtime] ?? 0) + shelf.ready.length;
    }
    return { cells, cellsStarting, cellsTarget, stopping: this.stopping.size, usedMb: this.ledger.used, budgetMb: this.budgetMb, pools: this.active.size, cellsByRuntime };
  }

  /** The memory budget and what fills it: counted, declared, measured. */
  memory(): MemoryStats {
    let declaredMb = 0;
    for (const pool of [...this.active.values(), ...this.draining]) for (const i of pool.snapshot().instances) declaredMb += i.memoryMb;
    for (const shelf of this.shelves.values()) declaredMb += (shelf.ready.length + shelf.starting) * this.cellMemoryMb;
    return {
      budgetMb: this.budgetMb,
      countedMb: this.ledger.used,
      declaredMb,
      residentMb: this.residentMb === undefined ? undefined : Math.round(this.residentMb),
      peakMb: this.ledger.peak,
      accounting: this.accounting,
      headroomMb: this.headroomMb,
    };
  }

  /** Memory-time counted so far, MiB-seconds, by function; the stem cells' under CELLS (""). */
  memorySeconds(): Map<string, number> {
    return this.ledger.mbSeconds();
  }

  /** A function's keep-alive as its policy sees it now (forge info). */
  keepAliveOf(fn: string): KeepAliveInfo & { prewarms: number } {
    return { ...this.keepAlive.describe(fn), prewarms: this.active.get(fn)?.prewarms ?? 0 };
  }

  /** The function and version an instance serves (by driver id); undefined for cells and unknown ids. */
  ownerOf(instanceId: string): { function: string; version: number } | undefined {
    const o = this.owner.get(instanceId);
    return o ? { function: o.pool.function, version: o.pool.version } : undefined;
  }

  /** Snapshots of every active pool (metrics). */
  snapshots(): PoolSnapshot[] {
    return [...this.active.values()].map((p) => p.snapshot());
  }

  startCounts(fn: string): StartCounts {
    return { ...(this.starts.get(fn) ?? { warm: 0, cell: 0, cold: 0 }) };
  }

  /**
   * Stops a function's idle instances above minWarm now, as the keep-alive would once they
   * have idled long enough (benchmarks measure first requests from zero this way, since a
   * deploy leaves the instance it verified the version with).
   */
  retireIdle(fn: string): void {
    this.active.get(fn)?.sweep(RETIRE_NOW);
  }

  /** Runs the keep-alive sweep now (the timer calls this; tests may too); adaptive cells shrink back. */
  sweep(): void {
    for (const pool of this.active.values()) pool.sweep(this.keepAlive.windows(pool.function));
    this.shrinkCells();
    // A cell below its minimum for want of memory may now evict an instance idle long enough.
    this.refillCells();
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.control.dispose();
    this.sweepTimer?.cancel();
    this.sampleTimer?.cancel();
    this.unsubscribeExit?.();
    const closing = new ForgeError(ErrorCode.Disposed, 503, "forge is shutting down", { hint: "retry against another node or after restart" });
    for (const pool of this.active.values()) pool.close(closing);
    for (const pool of this.draining) pool.close(closing);
    this.active.clear();
    for (const shelf of this.shelves.values()) for (const cell of shelf.ready.splice(0)) this.stopInstance(cell.handle.id);
    for (const d of this.drains) d.abort();
    await Promise.allSettled([...this.stopping]);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }

  /** Drains every pool (in-flight requests finish), bounded by `timeoutMs`, then disposes. */
  async shutdown(timeoutMs: number): Promise<void> {
    const drains = [...this.active.values()].map((p) => p.drain());
    await Promise.race([Promise.all(drains), new Promise((r) => setTimeout(r, timeoutMs).unref?.())]);
    await this.dispose();
  }

  // --- PoolHost ---

  newInstanceId(): string {
    return randomBytes(6).toString("hex");
  }

  async startInstance(pool: FunctionPool, id: string): Promise<{ handle: InstanceHandle; origin: StartKind }> {
    const spec = pool.spec;
    // A cell of the function's runtime already on its networks (joining one is far slower than a cell start).
    if (isShimRuntime(spec.runtime) && spec.bundlePath) {
      const cell = this.shelves.get(cellKey(spec.runtime, spec.networks))?.ready.shift();
      if (cell) {
        // The cell's memory is now the function's instance memory (reserved by the pool).
        // The refill waits until the cell answered: starting a container beside it takes
        // the CPU (dockerd, runc) that the specialization and first response need.
        this.ledger.add(CELLS, -cell.countedMb);
        this.tookCell(this.shelves.get(cellKey(spec.runtime, spec.networks)));
        this.owner.set(cell.handle.id, { pool, poolId: id });
        // A function that may use more than a cell loads its module under its own limit: raised
        // first (~11 ms on docker, paid only by functions above the cell's memory); a lower
        // limit follows once it answered, off the request's path.
        const raiseFirst = this.driver.setMemory !== undefined && spec.memoryMb > this.cellMemoryMb;
        try {
          if (raiseFirst) await this.driver.setMemory?.(cell.handle.id, spec.memoryMb);
          // The version's folder goes into the cell's own folder; a bare bundle (benches, old versions) is sent as source.
          const files = spec.artifactDir ? await this.driver.placeArtifact(cell.handle.id, spec.artifactDir) : { code: await this.bundle(spec.bundlePath) };
          // Bounded as a cold start is: a module that never finishes loading (a top-level
          // await that never settles, a loop) must fail its start, not hang it.
          const loading = AbortSignal.timeout(this.startTimeoutMs);
          await specialize(
            cell.handle.endpoint,
            cell.handle.controlToken,
            {
              function: spec.function,
              version: spec.version,
              ...files,
              env: spec.env,
              timeoutMs: spec.timeoutMs,
              memoryMb: spec.memoryMb,
              region: this.region,
              ...(spec.handler ? { handler: spec.handler } : {}),
            },
            loading,
            this.control,
          ).catch((err: unknown) => {
            if (!loading.aborted) throw err;
            throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `the module did not finish loading within ${this.startTimeoutMs} ms`, {
              hint: "look for a top-level await that never settles or a loop at the top of the module",
              cause: err,
            });
          });
        } catch (err) {
          // A cell killed while loading (its module went over the limit) says why, not "unreachable".
          const exit = await this.cellExit(cell.handle.id, err);
          this.owner.delete(cell.handle.id);
          this.stopInstance(cell.handle.id);
          this.refillCells();
          if (exit?.reason === "oom") {
            throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `${spec.function} v${spec.version} went over its memory limit of ${spec.memoryMb} MiB while its module loaded`, {
              hint: "raise memoryMb in forge.json (or --memory), or load less at the top of the module",
              cause: err,
            });
          }
          throw err;
        }
        setTimeout(() => {
          this.refillCells();
          // Cosmetic (docker: the container takes the function's name), so it waits as the refill does.
          this.driver
            .specialized?.(cell.handle.id, { function: spec.function, version: spec.version })
            .catch((err: unknown) => this.logger.warn(`could not name ${cell.handle.id} after ${spec.function} v${spec.version}:`, err));
        }, CELL_REFILL_DELAY_MS).unref?.();
        // Off the critical path: the limit follows the function's memoryMb (~11 ms on docker).
        if (this.driver.setMemory && !raiseFirst && spec.memoryMb !== this.cellMemoryMb) {
          this.driver.setMemory(cell.handle.id, spec.memoryMb).catch((err: unknown) => this.logger.warn(`could not set memory of ${cell.handle.id}:`, err));
        }
        return { handle: cell.handle, origin: "cell" };
      }
    }
    this.owner.set(id, { pool, poolId: id });
    try {
      const handle = await this.driver.start({
        id,
        role: "instance",
        runtime: spec.runtime,
        function: spec.function,
        version: spec.version,
        ...(spec.bundlePath ? { bundlePath: spec.bundlePath } : {}),
        ...(spec.artifactDir ? { artifactDir: spec.artifactDir } : {}),
        ...(spec.handler ? { handler: spec.handler } : {}),
        timeoutMs: spec.timeoutMs,
        region: this.region,
        ...(spec.image ? { image: spec.image } : {}),
        ...(spec.networks?.length ? { networks: spec.networks } : {}),
        env: spec.env,
        memoryMb: spec.memoryMb,
      });
      return { handle, origin: "cold" };
    } catch (err) {
      this.owner.delete(id);
      throw err;
    }
  }

  reserveMemory(pool: FunctionPool, speculative = false): number | undefined {
    const spec = pool.spec;
    const mb = this.estimateMb(spec);
    let credit = 0;
    for (;;) {
      // The instance will take a ready cell (startInstance, right after): the cell's memory becomes its.
      const cell = isShimRuntime(spec.runtime) && spec.bundlePath ? this.shelves.get(cellKey(spec.runtime, spec.networks))?.ready[0] : undefined;
      credit = cell?.countedMb ?? 0;
      if (this.ledger.used + mb - credit <= this.budgetMb) break;
      // A pre-warm is a bet on the next request, as a cell is: it makes room from cells grown
      // for a wave, or from an instance idle for the cell window (10 s) at least, never from
      // one used more recently.
      if (speculative ? !this.evictCell(true) && !this.evictIdleInstance(pool, this.cellWindowMs) : !this.evictOne(pool)) return undefined;
    }
    // The cell's memory leaves the count when it is taken, right after: not a peak.
    this.ledger.add(pool.function, mb, credit);
    return mb;
  }

  releaseMemory(fn: string, mb: number): void {
    this.ledger.add(fn, -mb);
    // Memory came free: pools waiting for it may start now.
    queueMicrotask(() => {
      for (const p of this.active.values()) if (p.queued > 0) p.scale();
      this.refillCells();
    });
  }

  private readonly stopping = new Set<Promise<void>>();
  /** Drains of retired instances under way; a shutdown cuts them short. */
  private readonly drains = new Set<AbortController>();

  stopInstance(id: string, graceful?: { handle: InstanceHandle; function: string; countedMb: number }): void {
    // A retired instance first finishes its ctx.waitUntil work (bounded), as Workers does;
    // a failed one, or one of a forge shutting down, is stopped at once. Its owner is kept
    // until then, so what it logs meanwhile is still its function's, and its memory stays
    // counted until it is gone.
    const drainFirst = graceful !== undefined && isShimRuntime(graceful.handle.spec.runtime) && !this.disposed;
    if (!drainFirst) this.owner.delete(id);
    let settled: Promise<unknown> = Promise.resolve();
    let abort: AbortController | undefined;
    if (drainFirst) {
      abort = new AbortController();
      this.drains.add(abort);
      settled = drain(graceful.handle, WAIT_UNTIL_GRACE_MS, abort.signal);
    }
    const p = settled
      .then(() => this.driver.stop(id))
      .catch((err: unknown) => this.logger.warn(`could not stop instance ${id}:`, err))
      .finally(() => {
        this.stopping.delete(p);
        if (abort) this.drains.delete(abort);
        if (drainFirst) this.owner.delete(id);
        if (graceful) this.releaseMemory(graceful.function, graceful.countedMb);
      });
    this.stopping.add(p);
  }

  countStart(fn: string, kind: StartKind): void {
    let c = this.starts.get(fn);
    if (!c) this.starts.set(fn, (c = { warm: 0, cell: 0, cold: 0 }));
    c[kind]++;
  }

  async checkInstance(handle: InstanceHandle): Promise<boolean> {
    try {
      await health(handle, handle.controlToken, AbortSignal.timeout(HEALTH_CHECK_MS));
      return true;
    } catch {
      // Likely dead: the driver's exit notice, saying why (an OOM), comes within ms. The
      // instance leaves the pool by it rather than by a stop, which would drop the notice.
      await this.exitNotice(handle.id);
      return false;
    }
  }

  /**
   * Why a cell being specialized went away, when it did: its exit notice (awaited up to
   * EXIT_NOTICE_MS when the failure looks like a dead cell), else undefined.
   */
  private async cellExit(id: string, err: unknown): Promise<ExitInfo | undefined> {
    let exit = this.recentExits.get(id);
    if (!exit && err instanceof ForgeError && err.code === ErrorCode.InstanceCrashed) {
      await this.exitNotice(id);
      exit = this.recentExits.get(id);
    }
    this.recentExits.delete(id);
    return exit;
  }

  /** Resolves on the driver's exit notice for `id`, or after EXIT_NOTICE_MS. */
  private exitNotice(id: string): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        if (this.exitNoticed.get(id) === done) this.exitNoticed.delete(id);
        resolve();
      };
      const timer = setTimeout(done, EXIT_NOTICE_MS);
      this.exitNoticed.set(id, done);
    });
  }

  onIdle(fn: string, idleMs: number): void {
    this.keepAlive.observeIdle?.(fn, idleMs);
  }

  // --- internal ---

  /** How the version's module is called, asked of one of its ready instances (null: not a shim, or no answer). */
  private async kindOf(pool: FunctionPool): Promise<"fetch" | "lambda" | null> {
    const handle = pool.readyHandle();
    if (!handle || !isShimRuntime(pool.spec.runtime)) return null;
    try {
      return (await health(handle, handle.controlToken, AbortSignal.timeout(5_000))).kind ?? null;
    } catch {
      return null;
    }
  }

  private onExit(info: ExitInfo): void {
    this.exitNoticed.get(info.id)?.();
    for (const shelf of this.shelves.values()) {
      const cellIndex = shelf.ready.findIndex((c) => c.handle.id === info.id);
      if (cellIndex < 0) continue;
      const [cell] = shelf.ready.splice(cellIndex, 1);
      this.releaseMemory(CELLS, cell?.countedMb ?? 0);
      this.logger.warn(`stem cell ${info.id} exited (${info.reason}); refilling`);
      // What it leaves (an exited container, a folder) goes; its memory was released above.
      this.stopInstance(info.id);
      return;
    }
    const owned = this.owner.get(info.id);
    if (!owned) return;
    this.owner.delete(info.id);
    // Kept a little while for a cell being specialized (cellExit reads why it went); bounded.
    this.recentExits.set(info.id, info);
    if (this.recentExits.size > 64) this.recentExits.delete(this.recentExits.keys().next().value as string);
    const { pool, poolId } = owned;
    this.logger.warn(`instance ${info.id} of ${pool.function} v${pool.version} exited (${info.reason}, code ${info.code})`);
    pool.instanceGone(poolId, info);
    // An exited instance leaves its container (docker) or folder (process) behind: removed now,
    // since the pool no longer knows it (its memory was released by instanceGone).
    this.stopInstance(info.id);
  }

  /**
   * How many cells of each kind to keep: the configured counts on the default networks, and
   * one for each other kind an active function needs. A kind no longer needed keeps the
   * cells it has (they serve the next deploy, or go to the memory budget's eviction).
   */
  private retarget(): void {
    const targets = new Map<string, { kind: CellKind; range: CellRange }>();
    for (const [runtime, range] of Object.entries(this.stemCellTargets) as [ShimRuntime, CellRange][]) {
      if (range.max > 0) targets.set(cellKey(runtime, this.cellNetworks), { kind: { runtime, networks: this.cellNetworks }, range });
    }
    for (const pool of this.active.values()) {
      const { runtime, networks = [] } = pool.spec;
      if (!isShimRuntime(runtime)) continue;
      const key = cellKey(runtime, networks);
      // A runtime configured with no cells gets none for its special kinds either.
      if (!targets.has(key) && (this.stemCellTargets[runtime]?.max ?? 0) > 0) targets.set(key, { kind: { runtime, networks: [...networks].sort() }, range: { min: 1, max: 1 } });
    }
    for (const [key, shelf] of this.shelves) {
      if (targets.has(key)) continue;
      // A kind nothing needs any more (its functions deleted or redeployed elsewhere): its
      // cells go, since they hold memory and, on docker, a database's network.
      shelf.target = shelf.min = shelf.max = 0;
      for (const cell of shelf.ready.splice(0)) {
        this.stopInstance(cell.handle.id);
        this.ledger.add(CELLS, -cell.countedMb);
      }
      if (shelf.starting === 0) this.shelves.delete(key);
    }
    for (const [key, { kind, range }] of targets) {
      let shelf = this.shelves.get(key);
      if (!shelf) this.shelves.set(key, (shelf = { kind, ready: [], starting: 0, target: range.min, min: range.min, max: range.max, takes: [] }));
      shelf.min = range.min;
      shelf.max = range.max;
      this.adaptTarget(shelf);
    }
  }

  /** A cell of the shelf was taken: the shelf keeps more while cells go fast. */
  private tookCell(shelf: Shelf | undefined): void {
    if (!shelf) return;
    shelf.takes.push(this.clock.now());
    if (shelf.takes.length > shelf.max) shelf.takes.splice(0, shelf.takes.length - shelf.max);
    this.adaptTarget(shelf);
  }

  /** target = min + cells taken within the window, at most max. */
  private adaptTarget(shelf: Shelf): void {
    const since = this.clock.now() - this.cellWindowMs;
    let old = 0;
    while (old < shelf.takes.length && (shelf.takes[old] ?? 0) <= since) old++;
    if (old > 0) shelf.takes.splice(0, old);
    shelf.target = Math.min(shelf.max, shelf.min + shelf.takes.length);
  }

  /** Cells above their shelf's target (the wave of takes passed) go, oldest first. */
  private shrinkCells(): void {
    for (const shelf of this.shelves.values()) {
      if (shelf.max <= shelf.min) continue;
      this.adaptTarget(shelf);
      while (shelf.ready.length > shelf.target) {
        const cell = shelf.ready.shift();
        if (!cell) break;
        this.stopInstance(cell.handle.id);
        this.releaseMemory(CELLS, cell.countedMb);
      }
    }
  }

  /**
   * What a new instance of the version is counted at until measured: its limit, or (measured
   * accounting) the most an instance of the version was seen to use plus the headroom.
   */
  private estimateMb(spec: PoolSpec): number {
    if (this.accounting === "declared" || !this.driver.memoryUsage) return spec.memoryMb;
    const learned = this.learnedMb.get(spec.function);
    if (!learned || learned.version !== spec.version) return spec.memoryMb;
    return Math.min(spec.memoryMb, Math.ceil(learned.mb + this.headroomMb));
  }

  /**
   * Measures every instance and cell (the driver's memoryUsage) and, with measured accounting,
   * counts each at its resident memory plus the headroom, at most its limit: an instance
   * growing towards its limit is counted at its real size, and idle ones are evicted (least
   * recently used first) when the sum passes the budget.
   */
  async sampleMemory(): Promise<void> {
    if (!this.driver.memoryUsage || this.disposed) return;
    let usage: Map<string, number>;
    try {
      usage = await this.driver.memoryUsage();
      this.sampleFailed = false;
    } catch (err) {
      if (!this.sampleFailed) this.logger.warn("could not measure instances' memory (the budget counts what it last knew):", err);
      this.sampleFailed = true;
      return;
    }
    if (this.disposed) return;
    const measured = this.accounting === "measured";
    let resident = 0;
    for (const [id, { pool, poolId }] of this.owner) {
      const inst = pool.instance(poolId);
      const bytes = usage.get(id);
      // A figure that is not a size (NaN, negative: a driver's bug) would poison the budget: ignored.
      if (!inst || inst.state !== "ready" || bytes === undefined || !(bytes >= 0) || !Number.isFinite(bytes)) continue;
      const mb = bytes / MIB;
      inst.residentMb = mb;
      resident += mb;
      const learned = this.learnedMb.get(pool.function);
      if (!learned || learned.version !== pool.version) this.learnedMb.set(pool.function, { version: pool.version, mb });
      else if (mb > learned.mb) learned.mb = mb;
      if (!measured) continue;
      const counted = Math.min(inst.memoryMb, Math.ceil(mb + this.headroomMb));
      if (counted !== inst.countedMb) {
        this.ledger.add(pool.function, counted - inst.countedMb);
        inst.countedMb = counted;
      }
    }
    for (const shelf of this.shelves.values()) {
      for (const cell of shelf.ready) {
        const bytes = usage.get(cell.handle.id);
        if (bytes === undefined || !(bytes >= 0) || !Number.isFinite(bytes)) continue;
        const mb = bytes / MIB;
        resident += mb;
        this.cellLearnedMb = Math.max(this.cellLearnedMb ?? 0, mb);
        if (!measured) continue;
        const counted = Math.min(this.cellMemoryMb, Math.ceil(mb + this.headroomMb));
        this.ledger.add(CELLS, counted - cell.countedMb);
        cell.countedMb = counted;
      }
    }
    this.residentMb = resident;
    // Grown past the budget (an instance allocating towards its limit): idle ones make room now.
    while (this.ledger.used > this.budgetMb && this.evictOne()) {}
    // Room came free (instances measured smaller than counted): waiting pools and cells may start.
    for (const p of this.active.values()) if (p.queued > 0) p.scale();
    this.refillCells();
  }

  private scheduleSample(): void {
    if (this.disposed || !this.driver.memoryUsage) return;
    this.sampleTimer = this.clock.setTimeout(() => {
      void this.sampleMemory().finally(() => this.scheduleSample());
    }, this.memorySampleMs);
  }

  private refillCells(): void {
    if (this.disposed) return;
    for (const shelf of this.shelves.values()) {
      while (shelf.ready.length + shelf.starting < shelf.target) {
        const counted = this.reserveMemoryForCell(shelf.ready.length + shelf.starting < shelf.min);
        if (counted === undefined) break;
        this.startCell(shelf, counted);
      }
    }
  }

  private startCell(shelf: Shelf, countedMb: number): void {
    shelf.starting++;
    const id = this.newInstanceId();
    const { runtime, networks } = shelf.kind;
    const image = runtime === "node" ? this.nodeImage : this.runtimeImage;
    this.driver
      .start({
        id,
        role: "cell",
        runtime,
        ...(image ? { image } : {}),
        ...(networks.length > 0 ? { networks: [...networks] } : {}),
        env: {},
        memoryMb: this.cellMemoryMb,
        region: this.region,
      })
      .then(
        (handle) => {
          shelf.starting--;
          if (this.disposed) return void this.driver.stop(handle.id).catch(() => {});
          if (shelf.ready.length >= shelf.target) {
            // Its kind was dropped (or the wave passed) while it started.
            this.stopInstance(handle.id);
            this.releaseMemory(CELLS, countedMb);
            return;
          }
          shelf.ready.push({ handle, createdAt: this.clock.now(), countedMb });
          // Connections opened now, off any request's path: a new one costs a fresh process most.
          this.control.prime(handle.endpoint.socketPath);
          for (const listener of this.cellReadyListeners) {
            try {
              listener(handle);
            } catch (err) {
              this.logger.warn("a cell-ready listener threw", err);
            }
          }
        },
        (err: unknown) => {
          shelf.starting--;
          this.ledger.add(CELLS, -countedMb);
          // No retry loop: the next take or memory release refills again.
          this.logger.error(`could not start a ${runtime} stem cell:`, err);
        },
      );
  }

  /** The MiB a new cell is counted at, or undefined when the budget has no room for it. */
  /**
   * The MiB a new cell is counted at, or undefined when the budget has no room for it. Up to
   * its shelf's minimum (`toMin`) a cell may evict the least recently used idle instance when
   * that one has been idle for the cell window (10 s) at least: with the budget full, the next
   * start would evict it anyway, and as a cell start it is paid now, off the request's path,
   * rather than as a cold start. Cells grown for a wave never evict.
   */
  private reserveMemoryForCell(toMin: boolean): number | undefined {
    const mb =
      this.accounting === "measured" && this.cellLearnedMb !== undefined ? Math.min(this.cellMemoryMb, Math.ceil(this.cellLearnedMb + this.headroomMb)) : this.cellMemoryMb;
    while (this.ledger.used + mb > this.budgetMb) {
      if (!toMin || !this.evictIdleInstance(undefined, this.cellWindowMs)) return undefined;
    }
    this.ledger.add(CELLS, mb);
    return mb;
  }

  /**
   * Makes room for `requester` (or, without one, brings the count back within the budget):
   * first a cell above its shelf's minimum (one grown for a wave), then the least recently
   * used idle instance outside the requester's pool, then any cell.
   */
  private evictOne(requester?: FunctionPool): boolean {
    if (this.evictCell(true)) return true;
    if (this.evictIdleInstance(requester)) return true;
    return this.evictCell(false);
  }

  /** Evicts the least recently used idle instance outside `requester`'s pool, idle for `minIdleMs` at least (minWarm ones are kept). */
  private evictIdleInstance(requester?: FunctionPool, minIdleMs = 0): boolean {
    let best: { pool: FunctionPool; inst: PoolInstance } | undefined;
    const idleSince = this.clock.now() - minIdleMs;
    for (const pool of [...this.active.values(), ...this.draining]) {
      if (pool === requester) continue;
      const inst = pool.evictionCandidate();
      if (inst && inst.lastUsed <= idleSince && (!best || inst.lastUsed < best.inst.lastUsed)) best = { pool, inst };
    }
    if (best) {
      this.logger.info(`evicting idle instance ${best.inst.id} of ${best.pool.function} to stay within the memory budget`);
      best.pool.evict(best.inst);
      return true;
    }
    return false;
  }

  /** Stops a cell: of a kind no longer kept first, then of the fullest shelf; `surplusOnly`: only one above its shelf's minimum. */
  private evictCell(surplusOnly: boolean): boolean {
    let from: Shelf | undefined;
    for (const shelf of this.shelves.values()) {
      if (shelf.ready.length === 0 || (surplusOnly && shelf.ready.length <= shelf.min)) continue;
      const surplus = shelf.ready.length - shelf.min;
      if (!from || surplus > from.ready.length - from.min) from = shelf;
    }
    const cell = from?.ready.pop();
    if (!cell) return false;
    this.stopInstance(cell.handle.id);
    this.ledger.add(CELLS, -cell.countedMb);
    return true;
  }

  private scheduleSweep(): void {
    if (this.disposed) return;
    this.sweepTimer = this.clock.setTimeout(() => {
      this.sweep();
      this.scheduleSweep();
    }, this.sweepEveryMs);
  }

  private bundle(path: string): Promise<string> {
    let p = this.bundles.get(path);
    if (!p) {
      p = this.readBundle(path);
      this.bundles.set(path, p);
      p.catch(() => this.bundles.delete(path));
    }
    return p;
  }

  private assertLive(): void {
    if (this.disposed) throw new ForgeError(ErrorCode.Disposed, 503, "the pool manager was disposed", { hint: "restart forge" });
  }
}
