/**
 * The cron scheduler: schedules live in the store; each process arms a timer per schedule
 * for its next tick and, when it fires, sends the payload through the same invoke path as
 * HTTP requests (kind "schedule"). Ticks missed while forge was down or stalled are not
 * replayed: the next tick is always computed from now.
 *
 * The clock is injected so that tick computation and the overlap policy are tested with a
 * fake clock; the leases are injected so that several nodes sharing Redis fire each tick once.
 */
import { randomBytes } from "node:crypto";
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError, guardRepo, isForgeError } from "../errors.ts";
import { realClock, type Clock, type TimerHandle } from "../pool/index.ts";
import type { AsyncScheduleRepo, ScheduleRecord } from "../store/index.ts";
import { localCronLeases, type CronLeases } from "./cron-leases.ts";
import { nextTick, parseScheduleInput } from "./cron.ts";

/** Sends a request to a function through the pool; the server wires the data plane in. */
export type InvokeFn = (name: string, request: Request, kind: "schedule" | "async") => Promise<Response>;

export interface SchedulerOptions {
  schedules: AsyncScheduleRepo;
  invoke: InvokeFn;
  logger: ConsolaInstance;
  /** Time and timers. Default the real clock. */
  clock?: Clock;
  /** Tick leases and run locks. Default local (one process). */
  leases?: CronLeases;
  /** How often the store is re-read to arm schedules made (or disarm ones deleted) by other nodes, ms; 0 = never. Default 10000. */
  syncEveryMs?: number;
  /** Called after this node created or deleted a schedule (several nodes: tell the others). Default none. */
  onChange?: () => void;
}

/** A schedule as the API shows it. */
export interface ScheduleView {
  id: string;
  function: string;
  cron: string;
  timezone: string | null;
  /** The JSON payload sent as the body of each run. */
  data: unknown;
  overlap: ScheduleRecord["overlap"];
  runs: number;
  skipped: number;
  lastRunAt: number | null;
  lastStatus: number | null;
  nextRunAt: number | null;
  /** Whether this node has a timer armed for it. */
  armed: boolean;
  createdAt: number;
}

/** Longest single timer; longer waits re-arm in steps (setTimeout overflows past 2^31-1 ms). */
const MAX_TIMER_MS = 2 ** 30;

export class Scheduler implements AsyncDisposable {
  private readonly clock: Clock;
  private readonly leases: CronLeases;
  private readonly logger: ConsolaInstance;
  private readonly armed = new Map<string, Armed>();
  /** Counts arm() calls: a sync disarms only what was armed before its read of the store began. */
  private arms = 0;
  /** The repository, its failures turned into 503 store_unavailable. */
  private readonly schedules: AsyncScheduleRepo;
  private readonly inFlight = new Set<Promise<void>>();
  private syncTimer: TimerHandle | undefined;
  private closed = false;

  constructor(private readonly o: SchedulerOptions) {
    this.clock = o.clock ?? realClock;
    this.leases = o.leases ?? localCronLeases();
    this.logger = o.logger.withTag("scheduler");
    this.schedules = guardRepo(o.schedules);
  }

  /** Arms every stored schedule and starts re-reading the store. */
  async start(): Promise<void> {
    await this.sync();
    this.scheduleSync();
  }

  /** Validates, saves and arms a schedule; invalid input is a 400 before anything is saved. */
  async create(fn: string, body: unknown): Promise<ScheduleView> {
    this.assertOpen();
    const input = parseScheduleInput(body);
    const record = await this.schedules.create({ id: `sch-${randomBytes(6).toString("hex")}`, function: fn, ...input });
    this.arm(record);
    this.o.onChange?.();
    this.logger.info(`schedule ${record.id} of ${fn}: "${record.cron}"${record.timezone ? ` (${record.timezone})` : ""}`);
    return this.view(record);
  }

  async list(fn?: string): Promise<ScheduleView[]> {
    return (await this.schedules.list(fn)).map((r) => this.view(r));
  }

  async get(id: string): Promise<ScheduleView> {
    const r = await this.schedules.get(id);
    if (!r) throw notFound(id);
    return this.view(r);
  }

  async delete(id: string): Promise<void> {
    this.disarm(id);
    if (!(await this.schedules.delete(id))) throw notFound(id);
    this.o.onChange?.();
  }

  /** Disarms the schedules of a deleted function (the function service removes them from the store). */
  disarmFunction(fn: string): void {
    for (const [id, a] of this.armed) if (a.record.function === fn) this.disarm(id);
  }

  /** Arms what the store has and this process has not, disarms what the store no longer has. */
  async sync(): Promise<void> {
    if (this.closed) return;
    const before = this.arms;
    const records = await this.schedules.list();
    if (this.closed) return;
    const ids = new Set(records.map((r) => r.id));
    // One armed while the list was read (create) may be missing from it: it stays.
    for (const [id, a] of this.armed) if (!ids.has(id) && a.seq <= before) this.disarm(id);
    for (const r of records) if (!this.armed.has(r.id)) this.arm(r);
  }

  /** Resolves when the runs started so far have finished (tests, shutdown). */
  async whenIdle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** Stops every timer; waits (bounded) for runs in progress. */
  async close(drainMs = 10_000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.syncTimer?.cancel();
    for (const id of [...this.armed.keys()]) this.disarm(id);
    let timer: TimerHandle | undefined;
    await Promise.race([this.whenIdle(), new Promise<void>((r) => (timer = realClock.setTimeout(r, drainMs)))]);
    timer?.cancel();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internal ---

  private view(r: ScheduleRecord): ScheduleView {
    const armed = this.armed.get(r.id);
    let nextRunAt: number | null = armed?.tick ?? null;
    if (!armed) {
      try {
        nextRunAt = nextTick(r, this.clock.now());
      } catch {
        nextRunAt = null; // a record saved by another version of forge with a pattern this one rejects
      }
    }
    let data: unknown = null;
    try {
      data = r.payload === null ? null : JSON.parse(r.payload);
    } catch {
      data = r.payload;
    }
    return {
      id: r.id,
      function: r.function,
      cron: r.cron,
      timezone: r.timezone,
      data,
      overlap: r.overlap,
      runs: r.runs,
      skipped: r.skipped,
      lastRunAt: r.lastRunAt,
      lastStatus: r.lastStatus,
      nextRunAt,
      armed: armed !== undefined,
      createdAt: r.createdAt,
    };
  }

  private arm(record: ScheduleRecord): void {
    if (this.closed) return;
    this.disarm(record.id);
    let tick: number | null;
    try {
      tick = nextTick(record, this.clock.now());
    } catch (err) {
      this.logger.warn(`schedule ${record.id} of ${record.function} is not armed:`, err instanceof Error ? err.message : err);
      return;
    }
    if (tick === null) return;
    const entry: Armed = { record, tick, timer: undefined, seq: ++this.arms };
    this.armed.set(record.id, entry);
    this.setTimer(entry);
  }

  private setTimer(entry: Armed): void {
    const wait = entry.tick - this.clock.now();
    entry.timer = this.clock.setTimeout(() => {
      if (this.armed.get(entry.record.id) !== entry) return;
      // Far ticks are reached in steps; a timer may also fire a little early.
      if (this.clock.now() < entry.tick) return this.setTimer(entry);
      this.onTick(entry);
    }, Math.min(Math.max(0, wait), MAX_TIMER_MS));
  }

  private onTick(entry: Armed): void {
    const tick = entry.tick;
    // Re-arm first, from max(now, tick): a late timer skips the ticks it missed rather than replaying them.
    const next = nextTick(entry.record, Math.max(this.clock.now(), tick));
    if (next === null) this.armed.delete(entry.record.id);
    else {
      entry.tick = next;
      this.setTimer(entry);
    }
    // What fire() lets out is the store's or the leases' (the run's own failures are recorded):
    // logged, and the next tick is armed already.
    const run = this.fire(entry.record.id, tick).catch((err: unknown) => this.logger.warn(`tick of schedule ${entry.record.id} failed:`, err));
    this.inFlight.add(run);
    void run.finally(() => this.inFlight.delete(run));
  }

  private async fire(id: string, tick: number): Promise<void> {
    // The store is the truth: a schedule deleted by another node (or with its function) stops here.
    const record = await this.schedules.get(id);
    if (!record) {
      this.disarm(id);
      return;
    }
    if (!(await this.leases.claimTick(id, tick))) return;
    let lock: { release(): Promise<void> } | undefined;
    if (record.overlap === "skip") {
      lock = await this.leases.claimRun(id);
      if (!lock) {
        await this.schedules.recordRun(id, { skipped: true });
        this.logger.debug(`schedule ${id}: tick ${new Date(tick).toISOString()} skipped, the previous run is still going`);
        return;
      }
    }
    const ranAt = this.clock.now();
    let status: number | null = null;
    try {
      const res = await this.o.invoke(record.function, tickRequest(record, tick), "schedule");
      status = res.status;
      // The run lasts until the body is read: the lease on the instance goes back then.
      await res.arrayBuffer();
      if (status >= 500) this.logger.warn(`schedule ${id} of ${record.function}: the run answered ${status}`);
    } catch (err) {
      status = isForgeError(err) ? err.status : null;
      this.logger.warn(`schedule ${id} of ${record.function}: the run failed:`, err instanceof Error ? err.message : err);
    } finally {
      await lock?.release();
    }
    await this.schedules.recordRun(id, { ranAt, status });
  }

  private disarm(id: string): void {
    const a = this.armed.get(id);
    if (!a) return;
    a.timer?.cancel();
    this.armed.delete(id);
  }

  private scheduleSync(): void {
    const every = this.o.syncEveryMs ?? 10_000;
    if (every <= 0 || this.closed) return;
    this.syncTimer = this.clock.setTimeout(() => {
      void this.sync()
        .catch((err: unknown) => this.logger.warn("could not re-read schedules:", err))
        .finally(() => this.scheduleSync());
    }, every);
  }

  private assertOpen(): void {
    if (this.closed) throw new ForgeError(ErrorCode.Disposed, 503, "the scheduler is closed", { hint: "forge is shutting down; retry against a running forge" });
  }
}

interface Armed {
  record: ScheduleRecord;
  /** Epoch ms of the next tick. */
  tick: number;
  timer: TimerHandle | undefined;
  /** Which arm() made it (see sync). */
  seq: number;
}

function tickRequest(record: ScheduleRecord, tick: number): Request {
  const headers: Record<string, string> = {
    "user-agent": "forge-scheduler",
    "x-forge-schedule-id": record.id,
    "x-forge-schedule-tick": new Date(tick).toISOString(),
    "x-forge-schedule-cron": record.cron,
  };
  if (record.payload !== null) headers["content-type"] = "application/json";
  return new Request("http://forge/", { method: "POST", headers, ...(record.payload !== null ? { body: record.payload } : {}) });
}

function notFound(id: string): ForgeError {
  return new ForgeError(ErrorCode.NotFound, 404, `schedule ${id.slice(0, 80)} not found`, { hint: "list schedules with `forge schedules`" });
}
