/**
 * Review of issue 17 (histogram keep-alive, adaptive cells, the memory ledger): a randomized
 * run of the pool against the fake driver with a fake clock, checking at quiet points that
 * the ledger counts exactly what is alive; and targeted cases for defects found.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { until } from "../../test/_helpers.ts";
import { FakeClock } from "./clock.ts";
import { createFakeDriver, type FakeDriver } from "./fake-driver.ts";
import { histogramKeepAlive } from "./keep-alive.ts";
import { loadConfig } from "../config.ts";
import { CELLS } from "./memory-ledger.ts";
import { PoolManager, type PoolManagerOptions } from "./pool-manager.ts";
import type { Lease, PoolSpec } from "./types.ts";
import { seeded } from "../bench/trace/prng.ts";

const quiet = createConsola({ level: -999 });
const MIB = 1024 * 1024;

function spec(fn: string, over: Partial<PoolSpec> = {}): PoolSpec {
  return { function: fn, version: 1, runtime: "bun", concurrency: 2, minWarm: 0, maxInstances: 4, memoryMb: 128, timeoutMs: 30_000, env: {}, bundlePath: `/bundles/${fn}.mjs`, ...over };
}

/** A small deterministic PRNG (mulberry32, the trace generator's). */
const rng = seeded;

// The test reads the manager's private state.
type Internals = any;

/** What the ledger should count: live instances of every pool (active and draining), cells ready and starting. */
function expected(pool: PoolManager): { total: number; byOwner: Map<string, number> } {
  const m = pool as Internals;
  const byOwner = new Map<string, number>();
  const add = (owner: string, mb: number) => byOwner.set(owner, (byOwner.get(owner) ?? 0) + mb);
  for (const p of [...m.active.values(), ...m.draining]) {
    for (const i of p.snapshot().instances) if (i.state !== "stopping") add(p.function, i.countedMb);
  }
  for (const shelf of m.shelves.values()) for (const c of shelf.ready) add(CELLS, c.countedMb);
  let total = 0;
  for (const v of byOwner.values()) total += v;
  return { total, byOwner };
}

async function quietPoint(pool: PoolManager): Promise<void> {
  const m = pool as Internals;
  await until(() => {
    const s = pool.stats();
    if (s.stopping > 0 || s.cellsStarting > 0) return false;
    for (const p of [...m.active.values(), ...m.draining]) for (const i of p.snapshot().instances) if (i.state === "starting") return false;
    return true;
  }, 10_000);
  // Microtasks queued by releaseMemory (scale, refill) run (one turn of the event loop), and what they start settles.
  await new Promise<void>((resolve) => setImmediate(resolve));
  await until(() => pool.stats().cellsStarting === 0 && pool.stats().stopping === 0, 10_000);
}

function checkLedger(pool: PoolManager, where: string): void {
  const m = pool as Internals;
  const { total, byOwner } = expected(pool);
  const used = pool.memory().countedMb;
  if (used !== total) throw new Error(`${where}: ledger counts ${used} MiB, live instances and cells ${total} MiB (${JSON.stringify([...byOwner])} vs ${JSON.stringify([...m.ledger.accounts].map(([k, a]: [string, { mb: number }]) => [k, a.mb]))})`);
  for (const [owner, mb] of byOwner) expect(m.ledger.held(owner)).toBe(mb);
  expect(used).toBeGreaterThanOrEqual(0);
  expect(m.clampedForReview).toEqual([]);
  // A deleted function's account goes once it gave everything back.
  const owners = new Set<string>([CELLS, ...[...m.active.values(), ...m.draining].map((p: { function: string }) => p.function)]);
  if (process.env.REVIEW_VERBOSE) for (const [key, shelf] of m.shelves) if (shelf.max === 0 && shelf.starting === 0) console.error(`${where}: stale shelf ${key}`);
  for (const [owner] of m.ledger.accounts) if (!owners.has(owner)) throw new Error(`${where}: the ledger keeps an account for ${owner}, which has no pool`);
}

interface Rig extends AsyncDisposable {
  pool: PoolManager;
  driver: FakeDriver;
  clock: FakeClock;
}

function rig(options: Partial<PoolManagerOptions> = {}, driver: FakeDriver = createFakeDriver()): Rig {
  const clock = new FakeClock();
  const pool = new PoolManager({
    driver,
    logger: quiet,
    clock,
    stemCells: { bun: { min: 1, max: 3 } },
    memoryBudgetMb: 700,
    keepAlive: histogramKeepAlive({ fallbackMs: 20_000, binMs: 1000, minSamples: 3 }),
    sweepEveryMs: 1000,
    memorySampleMs: 3_600_000_000,
    cellWindowMs: 5_000,
    readBundle: async (p) => `export default { fetch() { return new Response(${JSON.stringify(p)}) } }`,
    ...options,
  });
  // A release of more than an owner holds is clamped by the ledger (hiding a double release): caught here.
  const ledger = (pool as Internals).ledger;
  const add = ledger.add.bind(ledger);
  const clamped: string[] = [];
  ledger.add = (owner: string, delta: number, transient?: number) => {
    if (delta < 0 && -delta > ledger.held(owner)) clamped.push(`${owner || "cells"}: ${delta} with ${ledger.held(owner)} held`);
    add(owner, delta, transient);
  };
  (pool as Internals).clampedForReview = clamped;
  pool.start();
  return {
    pool,
    driver,
    clock,
    async [Symbol.asyncDispose]() {
      await pool.dispose();
      await driver.dispose();
    },
  };
}

describe("ledger under random operations", () => {
  const seeds = process.env.REVIEW_SEEDS ? Array.from({ length: Number(process.env.REVIEW_SEEDS) }, (_, i) => i + 1) : [1, 2, 3, 4, 5, 6];
  for (const seed of seeds) {
    test(`seed ${seed}: the ledger equals what is alive at every quiet point`, async () => {
      const rand = rng(seed);
      await using r = rig({}, createFakeDriver({ failStart: () => rand() < 0.1, startDelayMs: seed % 2 === 0 ? 3 : 0 }));
      const fns = ["a", "b", "c", "d"];
      const versions = new Map<string, number>();
      const held: { fn: string; lease: Lease }[] = [];
      const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)] as T;
      for (let step = 0; step < Number(process.env.REVIEW_STEPS ?? 400); step++) {
        const op = rand();
        const fn = pick(fns);
        try {
          if (op < 0.12) {
            const v = (versions.get(fn) ?? 0) + 1;
            versions.set(fn, v);
            await r.pool.activate(spec(fn, { version: v, memoryMb: pick([64, 128, 256]), minWarm: rand() < 0.2 ? 1 : 0, ...(rand() < 0.3 ? { networks: [pick(["db1", "db2"])] } : {}) }), { verify: rand() < 0.7 });
          } else if (op < 0.45) {
            if (!r.pool.pool(fn)) continue;
            // Given up after 200 ms in the queue (the pool's own abort), as a client going away.
            const lease = await Promise.resolve(r.pool.acquire(fn, AbortSignal.timeout(200))).catch(() => undefined);
            if (lease) {
              if (rand() < 0.2 && held.length < 6) held.push({ fn, lease });
              else lease.release();
            }
          } else if (op < 0.55) {
            const h = held.splice(Math.floor(rand() * held.length), 1)[0];
            h?.lease.release();
          } else if (op < 0.7) {
            r.clock.advance(Math.floor(rand() * 8000));
          } else if (op < 0.8) {
            for (const id of r.driver.live()) if (rand() < 0.5) r.driver.setMemoryUsage(id, Math.floor((10 + rand() * 300) * MIB));
            await r.pool.sampleMemory();
          } else if (op < 0.86) {
            const live = r.driver.live();
            if (live.length > 0) await r.driver.crash(pick(live));
          } else if (op < 0.9) {
            if (r.pool.pool(fn)) {
              for (let i = held.length - 1; i >= 0; i--) if (held[i]?.fn === fn) held.splice(i, 1);
              await r.pool.remove(fn);
            }
          } else if (op < 0.95) {
            r.pool.updateLive(fn, { minWarm: rand() < 0.5 ? 1 : 0, maxInstances: 1 + Math.floor(rand() * 3) });
          } else {
            r.pool.sweep();
          }
        } catch {
          // 503 (no memory), 404 (removed), load failures: what a client sees; the ledger must stay right.
        }
        if (step % 10 === 9) {
          // Quiet: nothing held, every start and stop settled.
          for (const h of held.splice(0)) h.lease.release();
          await quietPoint(r.pool);
          checkLedger(r.pool, `seed ${seed} step ${step}`);
          // Over the budget only by what cannot go: instances in minWarm (the sample evicts the rest).
          await r.pool.sampleMemory();
          await quietPoint(r.pool);
          checkLedger(r.pool, `seed ${seed} step ${step} (sampled)`);
          const m = r.pool as Internals;
          let pinned = 0;
          for (const p of m.active.values()) {
            const inst = p.snapshot().instances.filter((i: { state: string }) => i.state === "ready");
            if (inst.length <= p.spec.minWarm) for (const i of inst) pinned += i.countedMb;
          }
          if (r.pool.memory().countedMb > Math.max(r.pool.memory().budgetMb, pinned)) {
            throw new Error(`over budget at a quiet point: ${r.pool.memory().countedMb} > ${r.pool.memory().budgetMb}; ${JSON.stringify(r.pool.snapshots().map((s) => [s.function, s.instances.map((i) => [i.state, i.countedMb, i.idleMs])]))} cells ${JSON.stringify([...m.shelves.values()].map((s: { ready: { countedMb: number }[] }) => s.ready.map((c) => c.countedMb)))}`);
          }
        }
      }
      if (process.env.REVIEW_VERBOSE) console.error(`seed ${seed}: ${r.driver.started} starts, ${r.driver.stopped} stops, peak ${r.pool.memory().peakMb}, starts ${JSON.stringify(fns.map((f) => r.pool.startCounts(f)))}`);
    }, 120_000);
  }
});

const MIN = 60_000;

/** One request: a lease taken and given back. */
async function request(pool: PoolManager, fn: string): Promise<string> {
  const lease = await pool.acquire(fn);
  lease.release();
  return lease.start;
}

function liveOf(pool: PoolManager, fn: string): number {
  return pool.snapshot(fn)?.instances.filter((i) => i.state !== "stopping").length ?? 0;
}

describe("review: defects", () => {
  test("a driver reporting NaN (or negative) bytes does not poison the budget", async () => {
    const driver = createFakeDriver();
    const measure = driver.memoryUsage.bind(driver);
    let bad = Number.NaN;
    driver.memoryUsage = async () => {
      const m = await measure();
      for (const id of m.keys()) m.set(id, bad);
      return m;
    };
    await using r = rig({ stemCells: 0, memoryBudgetMb: 256, keepAlive: undefined }, driver);
    await r.pool.activate(spec("a", { maxInstances: 10, concurrency: 1 }));
    await r.pool.sampleMemory();
    expect(Number.isFinite(r.pool.memory().countedMb)).toBe(true);
    bad = -500 * MIB;
    await r.pool.sampleMemory();
    expect(r.pool.memory().countedMb).toBeGreaterThanOrEqual(0);
    // The budget still holds: two 128 MiB instances at most, whatever the driver said.
    const leases = await Promise.all([0, 1].map(() => r.pool.acquire("a")));
    const third = Promise.resolve(r.pool.acquire("a")).then(
      () => "served",
      () => "refused",
    );
    await until(() => r.pool.snapshot("a")?.instances.every((i) => i.state !== "starting"));
    expect(liveOf(r.pool, "a")).toBeLessThanOrEqual(2);
    for (const l of leases) l.release();
    await third;
    await quietPoint(r.pool);
    checkLedger(r.pool, "after bad figures");
  });

  test("the peak counted never shows more than the budget when an instance takes a credited cell", async () => {
    await using r = rig({ stemCells: 2, memoryBudgetMb: 256, memoryAccounting: "declared", keepAlive: undefined });
    await until(() => r.pool.stats().cells === 2);
    expect(r.pool.memory().countedMb).toBe(256);
    // The instance fits by taking a cell (reserveMemory credits it): 256 + 128 - 128.
    await r.pool.activate(spec("a"));
    expect(r.pool.snapshot("a")?.instances[0]?.origin).toBe("cell");
    expect(r.pool.memory().countedMb).toBeLessThanOrEqual(256);
    expect(r.pool.memory().peakMb).toBeLessThanOrEqual(256);
  });

  test("a pre-warm (a bet on the next request) does not evict another function's warm instance", async () => {
    await using r = rig({
      stemCells: 0,
      memoryBudgetMb: 128,
      memoryAccounting: "declared",
      keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }),
    });
    await r.pool.activate(spec("timer"), { verify: false });
    for (let i = 0; i < 11; i++) {
      await request(r.pool, "timer");
      r.clock.advance(5 * MIN);
    }
    expect(r.pool.keepAliveOf("timer")).toMatchObject({ source: "histogram", prewarmMs: 270_000 });
    // Past the window of this idle period: nothing of timer is loaded.
    r.clock.advance(30 * MIN);
    await until(() => liveOf(r.pool, "timer") === 0);
    await request(r.pool, "timer");
    r.clock.advance(1000);
    await until(() => liveOf(r.pool, "timer") === 0);
    await quietPoint(r.pool);
    // Another function (fixed TTL of 10 min) fills the budget meanwhile.
    await r.pool.activate(spec("other"));
    await request(r.pool, "other");
    expect(liveOf(r.pool, "other")).toBe(1);
    // timer's pre-warm time (4.5 min after its request): other, used 5 s before it (less than the
    // cell window of 10 s that a speculative start may evict past), must stay.
    r.clock.advance(265_000);
    expect(await request(r.pool, "other")).toBe("warm");
    r.clock.advance(5_000);
    await quietPoint(r.pool);
    expect(liveOf(r.pool, "other")).toBe(1);
    expect(await request(r.pool, "other")).toBe("warm");
  });
});

describe("review: version switch mid-prewarm", () => {
  test("a pre-warm still starting when a new version goes live is stopped once ready, its memory given back once", async () => {
    let hold: (() => void) | undefined;
    let holding = false;
    const driver = createFakeDriver({ startDelayMs: (sp) => (holding && sp.version === 1 ? new Promise<void>((res) => (hold = res)) : Promise.resolve()) });
    await using r = rig({ stemCells: 0, memoryBudgetMb: 1024, memoryAccounting: "declared", keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }) }, driver);
    await r.pool.activate(spec("timer"), { verify: false });
    for (let i = 0; i < 11; i++) {
      await request(r.pool, "timer");
      r.clock.advance(5 * MIN);
    }
    r.clock.advance(30 * MIN);
    await quietPoint(r.pool);
    await request(r.pool, "timer");
    r.clock.advance(1000);
    await until(() => liveOf(r.pool, "timer") === 0);
    await quietPoint(r.pool);
    holding = true;
    const before = r.pool.keepAliveOf("timer").prewarms;
    r.clock.advance(270_000);
    expect(r.pool.keepAliveOf("timer").prewarms).toBe(before + 1);
    await until(() => hold !== undefined);
    expect(r.pool.memory().countedMb).toBe(128);
    // v2 goes live while v1's pre-warm is still starting.
    await r.pool.activate(spec("timer", { version: 2 }), { verify: false });
    hold?.();
    await until(() => (r.pool as Internals).draining.size === 0);
    await quietPoint(r.pool);
    checkLedger(r.pool, "after the switch");
    expect(r.pool.memory().countedMb).toBe(0);
    expect(r.driver.live()).toEqual([]);
    // v2 has no idle period yet: nothing is pre-warmed for it until its first request.
    r.clock.advance(10 * MIN);
    expect(liveOf(r.pool, "timer")).toBe(0);
  });
});

describe("review: config", () => {
  test("FORGE_POLICY_MINUTE=0 and FORGE_MEMORY_SAMPLE=0 are refused", () => {
    expect(() => loadConfig({ FORGE_POLICY_MINUTE: "0" })).toThrow(/FORGE_POLICY_MINUTE/);
    expect(() => loadConfig({ FORGE_MEMORY_SAMPLE: "0" })).toThrow(/FORGE_MEMORY_SAMPLE/);
    expect(() => loadConfig({ FORGE_MEMORY_SAMPLE: "0.4ms" })).toThrow(/FORGE_MEMORY_SAMPLE/);
    expect(loadConfig({ FORGE_POLICY_MINUTE: "100ms", FORGE_MEMORY_SAMPLE: "100ms" })).toMatchObject({ policyMinuteMs: 100, memorySampleMs: 100 });
  });
});

describe("review: idle periods after failures", () => {
  test("a queue failed by a crash and a failed restart ends the busy period: the next idle time is pre-warmed", async () => {
    let failing = false;
    const driver = createFakeDriver({ failStart: () => failing });
    await using r = rig({ stemCells: 0, memoryBudgetMb: 1024, memoryAccounting: "declared", keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }) }, driver);
    await r.pool.activate(spec("timer", { concurrency: 1, maxInstances: 1 }), { verify: false });
    for (let i = 0; i < 11; i++) {
      await request(r.pool, "timer");
      r.clock.advance(5 * MIN);
    }
    r.clock.advance(30 * MIN);
    await quietPoint(r.pool);
    const a = await r.pool.acquire("timer");
    const b = Promise.resolve(r.pool.acquire("timer")).then(
      () => "served",
      () => "failed",
    );
    failing = true;
    await r.driver.crash(a.instance.id);
    expect(await b).toBe("failed");
    a.release();
    failing = false;
    await quietPoint(r.pool);
    expect(r.pool.pool("timer")?.inFlight).toBe(0);
    const before = r.pool.keepAliveOf("timer").prewarms;
    r.clock.advance(280_000);
    expect(r.pool.keepAliveOf("timer").prewarms).toBe(before + 1);
  });
});

describe("review: accounts of functions that never went live", () => {
  test("a first deploy that fails leaves no ledger account (nor a memory-time series) behind", async () => {
    const driver = createFakeDriver({ failStart: (sp) => sp.function?.startsWith("broken") ?? false });
    await using r = rig({ stemCells: 0, memoryAccounting: "declared" }, driver);
    for (let i = 0; i < 5; i++) await expect(r.pool.activate(spec(`broken-${i}`))).rejects.toThrow();
    await quietPoint(r.pool);
    checkLedger(r.pool, "after failed deploys");
    expect([...r.pool.memorySeconds().keys()].filter((k) => k.startsWith("broken"))).toEqual([]);
  });
});
