/**
 * FunctionPool: the instances of one function version. It leases the least-loaded ready
 * instance with a free slot; when none has one, requests wait in a bounded FIFO (429 on
 * overflow, 503 past the queue timeout) while the autoscaler starts what demand asks for:
 *
 *   desired = clamp(ceil((inFlight + queued) / (concurrency x targetUtilization)), minWarm, maxInstances)
 *
 * counting instances already starting, so a burst never starts more than it needs.
 */
import { ErrorCode, ForgeError } from "../errors.ts";
import type { ExitInfo, InstanceHandle } from "./driver.ts";
import { Fifo, type FifoNode } from "./_fifo.ts";
import type { Clock, TimerHandle } from "./clock.ts";
import type { KeepAliveWindows } from "./keep-alive.ts";
import type { InstanceExit, Lease, PoolSnapshot, PoolSpec, StartKind } from "./types.ts";

/**
 * How long a request that failed on its instance waits for the instance's exit notice, to
 * say why it ended (stopped for memory) rather than only that it failed. A notice follows
 * the death of the process by a few ms (the process driver reaps it and drains its output;
 * docker's events stream reports it), up to 1 s when a child of the function holds the
 * output open. Only failed requests wait, and one on a live instance stops waiting as soon
 * as its health check answers.
 */
export const EXIT_NOTICE_MS = 1_000;

/** What a pool asks of its manager: instances, memory, cells, time. */
export interface PoolHost {
  readonly clock: Clock;
  readonly queueTimeoutMs: number;
  readonly maxQueue: number;
  readonly targetUtilization: number;
  /** Starts an instance for the pool (from a cell when one is free); resolves when ready. `id` is the pool's key; the handle's id may differ (a cell's). */
  startInstance(pool: FunctionPool, id: string): Promise<{ handle: InstanceHandle; origin: StartKind }>;
  /**
   * Reserves memory for one more instance of the pool, evicting idle ones elsewhere: the MiB
   * counted for it until it is measured (its limit, or what its version was seen to use plus
   * the headroom), or undefined when no room can be made. `speculative` (a pre-warm): room is
   * made only from surplus stem cells, never by evicting another function's instance.
   */
  reserveMemory(pool: FunctionPool, speculative?: boolean): number | undefined;
  /** Gives back memory an instance of `fn` was counted at. */
  releaseMemory(fn: string, mb: number): void;
  /**
   * Stops an instance by its driver id (the handle's). Graceful (with its handle and the
   * memory it is counted at): after its pending ctx.waitUntil work, the memory released once
   * it is gone, so a draining instance still counts against the budget.
   */
  stopInstance(driverId: string, graceful?: { handle: InstanceHandle; function: string; countedMb: number }): void;
  newInstanceId(): string;
  countStart(fn: string, kind: StartKind): void;
  /** Does the instance answer its health check? (A request failing on it is not proof it is broken.) */
  checkInstance(handle: InstanceHandle): Promise<boolean>;
  /** The function had no request in flight for `idleMs` (an idle time of the keep-alive's histogram). */
  onIdle(fn: string, idleMs: number): void;
}

export class PoolInstance {
  state: "starting" | "ready" | "stopping" = "starting";
  inFlight = 0;
  /** WebSockets open on it: they take no request slot, but keep it from idling out. */
  websockets = 0;
  served = 0;
  handle: InstanceHandle | undefined;
  origin: StartKind = "cold";
  lastUsed: number;
  /** A health check asked by a failed request is under way. */
  checking = false;
  /** How it ended, once its driver's exit notice came. */
  exit: InstanceExit | undefined;
  /** Failed requests waiting to learn whether and how it ended (Lease.exited). */
  exitWaiters: ((exit: InstanceExit | undefined) => void)[] | undefined;
  /** Resident memory last measured, MiB (undefined until its driver measured it). */
  residentMb: number | undefined;

  constructor(
    readonly id: string,
    /** Its limit (the version's memoryMb). */
    readonly memoryMb: number,
    /** What the memory budget counts it at: its limit until measured, then resident + headroom (the manager keeps it). */
    public countedMb: number,
    readonly createdAt: number,
  ) {
    this.lastUsed = createdAt;
  }

  /** Tells those waiting how it ended: its exit, or undefined (it lives on, or left without a notice). */
  settleExit(): void {
    const waiters = this.exitWaiters;
    this.exitWaiters = undefined;
    for (const waiter of waiters ?? []) waiter(this.exit);
  }
}

interface Waiter {
  resolve(lease: Lease): void;
  reject(err: unknown): void;
  enqueuedAt: number;
  timer: TimerHandle;
  node?: FifoNode<Waiter>;
}

export class FunctionPool {
  private readonly instances = new Map<string, PoolInstance>();
  private readonly waiters = new Fifo<Waiter>();
  private inFlightTotal = 0;
  private draining = false;
  private drained: (() => void) | undefined;
  private lastDesired = 0;
  /** Since when no request has been in flight (undefined while one is, and before the first). */
  private idleSince: number | undefined;
  /** A request came and the function has not been idle since. */
  private busy = false;
  /** The idle period (its idleSince) an instance was brought back for ahead of the next request. */
  private prewarmedFor: number | undefined;
  /** Instances brought back ahead of a request (keep-alive pre-warm). */
  prewarms = 0;

  constructor(
    public spec: PoolSpec,
    private readonly host: PoolHost,
  ) {}

  get function(): string {
    return this.spec.function;
  }
  get version(): number {
    return this.spec.version;
  }
  get queued(): number {
    return this.waiters.size;
  }
  get inFlight(): number {
    return this.inFlightTotal;
  }
  get isDraining(): boolean {
    return this.draining;
  }
  /** Instances starting or ready. */
  get liveCount(): number {
    let n = 0;
    for (const i of this.instances.values()) if (i.state !== "stopping") n++;
    return n;
  }
  get readyCount(): number {
    let n = 0;
    for (const i of this.instances.values()) if (i.state === "ready") n++;
    return n;
  }

  /** Leases a slot at once when one is free (the warm path: no promise, no allocation but the lease). */
  tryAcquire(): Lease | undefined {
    if (this.waiters.size > 0) return undefined; // FIFO: nobody jumps the queue
    const inst = this.leastLoaded();
    return inst ? this.lease(inst, "warm", 0) : undefined;
  }

  /** Leases a slot, waiting in the queue and scaling up when none is free. */
  acquire(signal?: AbortSignal): Lease | Promise<Lease> {
    const now = this.tryAcquire();
    if (now) return now;
    if (this.draining) {
      return Promise.reject(new ForgeError(ErrorCode.QueueTimeout, 503, `${this.function} v${this.version} is being replaced`, { hint: "retry the request" }));
    }
    if (this.waiters.size >= this.host.maxQueue) {
      throw new ForgeError(ErrorCode.Saturated, 429, `${this.function} is saturated: ${this.waiters.size} requests already wait`, {
        hint: "retry with backoff, or raise maxInstances / concurrency (forge deploy --max-instances N)",
      });
    }
    const p = new Promise<Lease>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        enqueuedAt: this.host.clock.now(),
        timer: this.host.clock.setTimeout(() => {
          if (waiter.node && this.waiters.remove(waiter.node)) {
            this.markIdle();
            reject(
              new ForgeError(ErrorCode.QueueTimeout, 503, `${this.function}: no instance was free within ${this.host.queueTimeoutMs} ms`, {
                hint: "the function is at capacity: raise maxInstances or concurrency, or the memory budget (FORGE_MEMORY_BUDGET_MB)",
              }),
            );
          }
        }, this.host.queueTimeoutMs),
      };
      waiter.node = this.waiters.push(waiter);
      if (signal) {
        signal.addEventListener(
          "abort",
          () => {
            if (waiter.node && this.waiters.remove(waiter.node)) {
              waiter.timer.cancel();
              this.markIdle();
              reject(signal.reason);
            }
          },
          { once: true },
        );
      }
    });
    this.scale();
    return p;
  }

  /** Desired instance count for the current demand. */
  desired(): number {
    const { concurrency, minWarm, maxInstances } = this.spec;
    const demand = Math.ceil((this.inFlightTotal + this.waiters.size) / (concurrency * this.host.targetUtilization));
    return Math.min(maxInstances, Math.max(minWarm, demand));
  }

  /** Starts instances until the live count reaches the desired count (scale up at once). */
  scale(): void {
    if (this.draining) return;
    const desired = this.desired();
    this.lastDesired = desired;
    let live = this.liveCount;
    while (live < desired) {
      const counted = this.host.reserveMemory(this);
      if (counted === undefined) break; // waiters wait for memory, then 503
      // A failed start fails the queue (startOne) when nobody else can serve it.
      this.startOne(counted).catch(() => {});
      live++;
    }
  }

  /**
   * Starts `n` instances and waits until they are ready (a version is warmed before it gets
   * traffic). Rejects when none of them is ready: with the first start's error (the module
   * did not load, the container did not answer) or, when not even one fit, a memory error.
   */
  async warm(n: number): Promise<void> {
    const target = Math.min(n, this.spec.maxInstances);
    const starting: Promise<void>[] = [];
    while (this.liveCount < target) {
      const counted = this.host.reserveMemory(this);
      if (counted === undefined) break;
      starting.push(this.startOne(counted));
    }
    const results = await Promise.allSettled(starting);
    if (target === 0 || this.readyCount > 0) return;
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    throw new ForgeError(ErrorCode.ServiceUnavailable, 503, `no memory is left for an instance of ${this.function} (${this.spec.memoryMb} MiB): instances in use fill FORGE_MEMORY_BUDGET_MB`, {
      hint: "retry once traffic calms down, raise FORGE_MEMORY_BUDGET_MB, lower memoryMb, or delete functions you no longer need",
    });
  }

  /** The handle of a ready instance, if there is one (to ask its shim about the module). */
  readyHandle(): InstanceHandle | undefined {
    for (const i of this.instances.values()) if (i.state === "ready" && i.handle) return i.handle;
    return undefined;
  }

  /**
   * Keep-alive, by the policy's windows: instances idle past keepAliveMs stop, keeping minWarm
   * and what demand needs. With a pre-warm window (histogram policy), a function with nothing
   * in flight is unloaded at once and one instance is brought back (from a stem cell) once it
   * has been idle for prewarmMs, kept until keepAliveMs.
   */
  sweep(windows: KeepAliveWindows): void {
    if (this.draining) return;
    const now = this.host.clock.now();
    let live = this.liveCount;
    let floor = Math.max(this.spec.minWarm, this.desired());
    let ttl = windows.keepAliveMs;
    if (windows.prewarmMs > 0 && this.idleSince !== undefined) {
      const idleFor = now - this.idleSince;
      // Unloaded after a request; one instance is back for [prewarmMs, keepAliveMs) of the idle time.
      ttl = 0;
      if (idleFor >= windows.prewarmMs && idleFor < windows.keepAliveMs) {
        floor = Math.max(floor, 1);
        // Once per idle period: one evicted meanwhile for memory is not brought back again.
        if (live === 0 && this.prewarmedFor !== this.idleSince) {
          this.prewarmedFor = this.idleSince;
          const counted = this.host.reserveMemory(this, true);
          if (counted !== undefined) {
            this.prewarms++;
            this.startOne(counted).catch(() => {});
            live++;
          }
        }
      }
    }
    // Oldest idle first, so the most recently used instances (warmest caches) stay.
    const idle = [...this.instances.values()]
      .filter((i) => i.state === "ready" && i.inFlight === 0 && i.websockets === 0 && now - i.lastUsed >= ttl)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    for (const inst of idle) {
      if (live <= floor) break;
      this.retire(inst);
      live--;
    }
  }

  /**
   * An instance exited or failed its check: out of the pool at once, replaced when demand or
   * minWarm asks. `exit`: its driver's notice, which requests that failed on it are told.
   */
  instanceGone(id: string, exit?: ExitInfo): boolean {
    const inst = this.instances.get(id);
    if (!inst) return false;
    if (exit) inst.exit = { reason: exit.reason, code: exit.code, memoryMb: inst.memoryMb };
    inst.settleExit();
    this.instances.delete(id);
    if (inst.state !== "stopping") this.host.releaseMemory(this.function, inst.countedMb);
    inst.state = "stopping";
    this.inFlightTotal -= inst.inFlight;
    inst.inFlight = 0;
    inst.websockets = 0;
    this.markIdle();
    this.checkDrained();
    this.scale();
    return true;
  }

  /** Idle instance the manager may evict to make memory room (LRU across pools). */
  evictionCandidate(): PoolInstance | undefined {
    let best: PoolInstance | undefined;
    for (const i of this.instances.values()) {
      if (i.state !== "ready" || i.inFlight > 0 || i.websockets > 0) continue;
      if (!best || i.lastUsed < best.lastUsed) best = i;
    }
    // minWarm instances are a promise to the user; they are not evicted for someone else.
    if (best && this.liveCount <= this.spec.minWarm) return undefined;
    return best;
  }

  /** Stops an idle instance at once (no waitUntil grace): its memory is wanted now. */
  evict(inst: PoolInstance): void {
    this.retire(inst, false);
  }

  /** Stops taking requests; resolves when in-flight requests and queued ones are done, then stops all instances. */
  drain(): Promise<void> {
    this.draining = true;
    const done = new Promise<void>((resolve) => (this.drained = resolve));
    this.checkDrained();
    return done;
  }

  /** Stops everything now, failing waiters. */
  close(reason: ForgeError): void {
    this.draining = true;
    for (const w of this.waiters.drain()) {
      w.timer.cancel();
      w.reject(reason);
    }
    for (const inst of [...this.instances.values()]) this.retire(inst, false);
    this.drained?.();
  }

  snapshot(): PoolSnapshot {
    const now = this.host.clock.now();
    return {
      function: this.function,
      version: this.version,
      draining: this.draining,
      inFlight: this.inFlightTotal,
      queued: this.waiters.size,
      desired: this.lastDesired,
      instances: [...this.instances.values()].map((i) => ({
        id: i.handle?.id ?? i.id,
        state: i.state,
        inFlight: i.inFlight,
        websockets: i.websockets,
        origin: i.origin,
        ageMs: now - i.createdAt,
        idleMs: i.inFlight > 0 || i.websockets > 0 ? 0 : now - i.lastUsed,
        served: i.served,
        memoryMb: i.memoryMb,
        countedMb: i.countedMb,
        ...(i.residentMb !== undefined ? { residentMb: Math.round(i.residentMb * 10) / 10 } : {}),
        ...(i.handle ? { socketPath: i.handle.endpoint.socketPath } : {}),
      })),
    };
  }

  // --- internal ---

  private leastLoaded(): PoolInstance | undefined {
    let best: PoolInstance | undefined;
    const cap = this.spec.concurrency;
    for (const i of this.instances.values()) {
      if (i.state !== "ready" || i.checking || i.inFlight >= cap) continue;
      if (!best || i.inFlight < best.inFlight) best = i;
      if (best.inFlight === 0) break;
    }
    return best;
  }

  private lease(inst: PoolInstance, start: StartKind, queueWaitMs: number): Lease {
    const handle = inst.handle;
    if (!handle) throw new ForgeError(ErrorCode.Internal, 500, "lease on an instance that has not started");
    inst.inFlight++;
    inst.served++;
    this.inFlightTotal++;
    const now = this.host.clock.now();
    // The function's idle time ends (one per quiet period of the function, whichever instance serves).
    if (!this.busy) {
      if (this.idleSince !== undefined) this.host.onIdle(this.function, now - this.idleSince);
      this.idleSince = undefined;
      this.busy = true;
    }
    inst.lastUsed = now;
    this.host.countStart(this.function, start);
    return new PoolLease(this, inst, handle, start, queueWaitMs);
  }

  /** @internal A lease's slot goes back (PoolLease.release). */
  returnSlot(inst: PoolInstance, websocket = false): void {
    if (this.instances.get(inst.id) !== inst) return; // gone meanwhile; counts already dropped
    inst.lastUsed = this.host.clock.now();
    if (websocket) {
      inst.websockets--;
      return;
    }
    inst.inFlight--;
    this.inFlightTotal--;
    this.dispatch(inst, "warm");
    this.markIdle();
    this.checkDrained();
  }

  /**
   * @internal A request became a WebSocket (PoolLease.upgraded). As on Workers, it takes no
   * request slot (its slot goes back now: others are served), but keeps its instance from
   * idling out or being evicted; a drain does not wait for it (the retired instance closes it).
   */
  slotToWebSocket(inst: PoolInstance): void {
    if (this.instances.get(inst.id) !== inst) return;
    inst.websockets++;
    inst.inFlight--;
    this.inFlightTotal--;
    this.dispatch(inst, "warm");
    this.markIdle();
    this.checkDrained();
  }

  /**
   * @internal A request failed on the instance's connection (PoolLease.fail). One odd request
   * (a method its server refuses, a head too large for it) must not stop an instance that
   * serves others: it goes only when its health check fails too (an exit is seen sooner, by
   * the driver). While it is checked it takes no new request, so a dead instance fails only
   * what was in flight on it.
   */
  suspectInstance(inst: PoolInstance): void {
    const handle = inst.handle;
    if (this.instances.get(inst.id) !== inst || inst.checking || !handle) return;
    inst.checking = true;
    void this.host.checkInstance(handle).then((healthy) => {
      inst.checking = false;
      // Gone meanwhile (its exit notice told them already), alive, or about to be retired: told now.
      inst.settleExit();
      if (this.instances.get(inst.id) !== inst) return;
      // Healthy: back in rotation, and waiting requests may take its slots.
      if (healthy) return this.dispatch(inst, "warm");
      this.retire(inst, false);
      this.scale();
    });
  }

  /** @internal How the instance of a failed lease ended, if it did (PoolLease.exited). */
  exitOf(inst: PoolInstance): Promise<InstanceExit | undefined> {
    // Known, or nothing to wait for: out of the pool without a notice, or not under suspicion.
    if (inst.exit || !inst.checking) return Promise.resolve(inst.exit);
    return new Promise((resolve) => {
      const timer = this.host.clock.setTimeout(() => resolve(undefined), EXIT_NOTICE_MS);
      (inst.exitWaiters ??= []).push((exit) => {
        timer.cancel();
        resolve(exit);
      });
    });
  }

  /** Hands free slots of an instance to waiting requests, in order. */
  private dispatch(inst: PoolInstance, start: StartKind): void {
    while (inst.state === "ready" && !inst.checking && inst.inFlight < this.spec.concurrency && this.waiters.size > 0) {
      const w = this.waiters.shift();
      if (!w) break;
      w.timer.cancel();
      w.resolve(this.lease(inst, start, this.host.clock.now() - w.enqueuedAt));
    }
  }

  /** The instance the pool knows by `id` (its key), if it still does. */
  instance(id: string): PoolInstance | undefined {
    return this.instances.get(id);
  }

  private startOne(countedMb: number): Promise<void> {
    const id = this.host.newInstanceId();
    const inst = new PoolInstance(id, this.spec.memoryMb, countedMb, this.host.clock.now());
    this.instances.set(id, inst);
    return this.host.startInstance(this, id).then(
      ({ handle, origin }) => {
        if (this.instances.get(id) !== inst || inst.state === "stopping") {
          this.host.stopInstance(handle.id); // retired while starting (drained, deleted)
          return;
        }
        inst.handle = handle;
        inst.origin = origin;
        inst.state = "ready";
        inst.lastUsed = this.host.clock.now();
        this.dispatch(inst, origin);
        this.checkDrained();
      },
      (err: unknown) => {
        if (this.instances.get(id) === inst) {
          this.instances.delete(id);
          this.host.releaseMemory(this.function, inst.countedMb);
        }
        // Nobody else can serve the queue: fail it now rather than after the queue timeout.
        if (this.liveCount === 0) {
          for (const w of this.waiters.drain()) {
            w.timer.cancel();
            w.reject(err);
          }
          // Nothing waits any more: the function's idle time starts (the keep-alive's histogram).
          this.markIdle();
        }
        this.checkDrained();
        throw err;
      },
    );
  }

  /** Nothing in flight or waiting any more: the function's idle time starts. */
  private markIdle(): void {
    if (this.busy && this.inFlightTotal === 0 && this.waiters.size === 0) {
      this.busy = false;
      this.idleSince = this.host.clock.now();
    }
  }

  private retire(inst: PoolInstance, graceful = true): void {
    if (inst.state === "stopping") return;
    const wasStarting = inst.state === "starting";
    inst.state = "stopping";
    inst.settleExit();
    this.instances.delete(inst.id);
    this.inFlightTotal -= inst.inFlight;
    inst.inFlight = 0;
    inst.websockets = 0;
    this.markIdle();
    const handle = inst.handle;
    if (!wasStarting && graceful && handle) {
      this.host.stopInstance(handle.id, { handle, function: this.function, countedMb: inst.countedMb });
      return;
    }
    this.host.releaseMemory(this.function, inst.countedMb);
    // A starting instance is stopped when its start resolves (see startOne).
    if (!wasStarting) this.host.stopInstance(handle?.id ?? inst.id);
  }

  private checkDrained(): void {
    if (!this.draining || !this.drained) return;
    if (this.inFlightTotal > 0 || this.waiters.size > 0) return;
    for (const inst of [...this.instances.values()]) {
      if (inst.state === "starting") continue;
      this.retire(inst);
    }
    if (this.instances.size === 0) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }
}

/** A slot on an instance: a class rather than closures, since one is made per request. */
class PoolLease implements Lease {
  private done = false;
  private websocket = false;

  constructor(
    private readonly pool: FunctionPool,
    private readonly inst: PoolInstance,
    readonly instance: InstanceHandle,
    readonly start: StartKind,
    readonly queueWaitMs: number,
  ) {}

  get version(): number {
    return this.pool.version;
  }

  release(): void {
    if (this.done) return;
    this.done = true;
    this.pool.returnSlot(this.inst, this.websocket);
  }

  upgraded(): void {
    if (this.done || this.websocket) return;
    this.websocket = true;
    this.pool.slotToWebSocket(this.inst);
  }

  fail(): void {
    this.release();
    this.pool.suspectInstance(this.inst);
  }

  exited(): Promise<InstanceExit | undefined> {
    return this.pool.exitOf(this.inst);
  }
}
