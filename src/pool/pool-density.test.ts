/**
 * Issue 17's decisions with the fake driver and a fake clock: the histogram keep-alive in the
 * pool (unload after a request, pre-warm, keep, minWarm wins), stem cells that follow the rate
 * they are taken at, the budget counting measured memory, and memory-time.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { until } from "../../test/_helpers.ts";
import { FakeClock } from "./clock.ts";
import { createFakeDriver, FAKE_RESIDENT_BYTES, type FakeDriver } from "./fake-driver.ts";
import { fixedKeepAlive, histogramKeepAlive } from "./keep-alive.ts";
import { MemoryLedger } from "./memory-ledger.ts";
import { PoolManager, type PoolManagerOptions } from "./pool-manager.ts";
import type { PoolSpec } from "./types.ts";

const quiet = createConsola({ level: -999 });
const MIN = 60_000;
const MIB = 1024 * 1024;

function spec(fn: string, over: Partial<PoolSpec> = {}): PoolSpec {
  return { function: fn, version: 1, runtime: "bun", concurrency: 8, minWarm: 0, maxInstances: 100, memoryMb: 128, timeoutMs: 30_000, env: {}, bundlePath: `/bundles/${fn}.mjs`, ...over };
}

interface Rig extends AsyncDisposable {
  pool: PoolManager;
  driver: FakeDriver;
  clock: FakeClock;
}

function rig(options: Partial<PoolManagerOptions> = {}): Rig {
  const driver = createFakeDriver();
  const clock = new FakeClock();
  const pool = new PoolManager({
    driver,
    logger: quiet,
    clock,
    stemCells: 0,
    memoryBudgetMb: 1_000_000,
    keepAlive: fixedKeepAlive(10 * MIN),
    sweepEveryMs: 1000,
    // Sampling is driven by the tests (sampleMemory), not by the fake clock's advances.
    memorySampleMs: 3_600_000_000,
    readBundle: async (p) => `export default { fetch() { return new Response(${JSON.stringify(p)}) } }`,
    ...options,
  });
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

/** One request: a lease taken and given back. */
async function request(pool: PoolManager, fn: string): Promise<string> {
  const lease = await pool.acquire(fn);
  lease.release();
  return lease.start;
}

function live(pool: PoolManager, fn: string): number {
  return pool.snapshot(fn)?.instances.filter((i) => i.state !== "stopping").length ?? 0;
}

function ready(pool: PoolManager, fn: string): number {
  return pool.snapshot(fn)?.instances.filter((i) => i.state === "ready").length ?? 0;
}

describe("histogram keep-alive in the pool", () => {
  test("a regular function is unloaded after each request, brought back at the 5th percentile and kept until the 99th", async () => {
    await using r = rig({ keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }) });
    await r.pool.activate(spec("timer"), { verify: false });
    // Ten requests 5 minutes apart: the fixed TTL (10 min) keeps the instance warm meanwhile.
    for (let i = 0; i < 11; i++) {
      expect(await request(r.pool, "timer")).toBe(i === 0 ? "cold" : "warm");
      r.clock.advance(5 * MIN);
    }
    expect(r.pool.keepAliveOf("timer")).toMatchObject({ source: "histogram", prewarmMs: 270_000, keepAliveMs: 396_000, samples: 10 });
    // (The last 5 minutes of the loop already ran on the histogram: one pre-warm.)
    const before = r.pool.keepAliveOf("timer").prewarms;
    await request(r.pool, "timer");
    // Unloaded at the next sweep: nothing is kept through the head of the idle time.
    r.clock.advance(1000);
    await until(() => live(r.pool, "timer") === 0);
    // 4.5 min after the request: one is brought back (pre-warmed) and is ready when the request comes.
    r.clock.advance(270_000 - 1000);
    await until(() => ready(r.pool, "timer") === 1);
    expect(r.pool.keepAliveOf("timer").prewarms).toBe(before + 1);
    r.clock.advance(30_000);
    expect(await request(r.pool, "timer")).toBe("warm");
    // No request after this one: gone at once, back at 4.5 min, gone again past 6.6 min.
    r.clock.advance(1000);
    await until(() => live(r.pool, "timer") === 0);
    r.clock.advance(270_000);
    await until(() => ready(r.pool, "timer") === 1);
    r.clock.advance(396_000 - 271_000 - 1000);
    expect(live(r.pool, "timer")).toBe(1);
    r.clock.advance(2000);
    await until(() => live(r.pool, "timer") === 0);
    // Not brought back again in the same idle period.
    r.clock.advance(30 * MIN);
    expect(live(r.pool, "timer")).toBe(0);
    expect(r.pool.keepAliveOf("timer").prewarms).toBe(before + 2);
  });

  test("with the budget full, a pre-warm takes the memory of an instance idle for the cell window", async () => {
    await using r = rig({ memoryBudgetMb: 128, memoryAccounting: "declared", keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }) });
    await r.pool.activate(spec("timer"), { verify: false });
    for (let i = 0; i < 11; i++) {
      await request(r.pool, "timer");
      r.clock.advance(5 * MIN);
    }
    r.clock.advance(30 * MIN);
    await request(r.pool, "timer");
    r.clock.advance(1000);
    await until(() => live(r.pool, "timer") === 0 && r.pool.stats().usedMb === 0);
    // Another function (fixed TTL) takes the whole budget, then idles 4 min.
    await r.pool.activate(spec("other"));
    r.clock.advance(269_000);
    await until(() => ready(r.pool, "timer") === 1);
    expect(live(r.pool, "other")).toBe(0);
    r.clock.advance(30_000);
    expect(await request(r.pool, "timer")).toBe("warm");
  });

  test("minWarm wins over the histogram: its instances stay through every window", async () => {
    await using r = rig({ keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }) });
    await r.pool.activate(spec("kept", { minWarm: 1 }));
    for (let i = 0; i < 11; i++) {
      await request(r.pool, "kept");
      r.clock.advance(5 * MIN);
    }
    expect(r.pool.keepAliveOf("kept").source).toBe("histogram");
    await request(r.pool, "kept");
    r.clock.advance(2 * MIN);
    expect(live(r.pool, "kept")).toBe(1);
    r.clock.advance(60 * MIN);
    expect(live(r.pool, "kept")).toBe(1);
  });

  test("while the histogram is not representative, the fixed TTL applies", async () => {
    await using r = rig({ keepAlive: histogramKeepAlive({ fallbackMs: 10 * MIN, binMs: MIN }) });
    await r.pool.activate(spec("rare"), { verify: false });
    await request(r.pool, "rare");
    expect(r.pool.keepAliveOf("rare")).toMatchObject({ source: "fixed", keepAliveMs: 10 * MIN });
    r.clock.advance(9 * MIN);
    expect(live(r.pool, "rare")).toBe(1);
    r.clock.advance(2 * MIN);
    await until(() => live(r.pool, "rare") === 0);
  });
});

describe("adaptive stem cells", () => {
  test("cells grow under a wave of first requests and shrink back when it passes", async () => {
    await using r = rig({ stemCells: { bun: { min: 1, max: 6 } }, cellWindowMs: 10_000 });
    await until(() => r.pool.stats().cells === 1);
    const fns = Array.from({ length: 10 }, (_, i) => `wave-${i}`);
    for (const fn of fns) await r.pool.activate(spec(fn), { verify: false });
    // The wave: first requests to one function after another, each as a cell is there.
    const starts: string[] = [];
    for (const fn of fns) {
      await until(() => r.pool.stats().cells >= 1);
      starts.push(await request(r.pool, fn));
    }
    expect(starts.every((s) => s === "cell")).toBe(true);
    // 10 taken within the window: the shelf keeps its max.
    expect(r.pool.stats().cellsTarget).toBe(6);
    await until(() => r.pool.stats().cells === 6);
    // A burst of six first requests at once now meets six cells.
    const more = Array.from({ length: 6 }, (_, i) => `burst-${i}`);
    for (const fn of more) await r.pool.activate(spec(fn), { verify: false });
    const burst = await Promise.all(more.map((fn) => request(r.pool, fn)));
    expect(burst.filter((s) => s === "cell").length).toBe(6);
    await until(() => r.pool.stats().cells === 6);
    // The wave passed: after the window, back to the minimum.
    r.clock.advance(11_000);
    expect(r.pool.stats().cellsTarget).toBe(1);
    await until(() => r.pool.stats().cells === 1);
  });

  test("with the budget full, a cell below its minimum replaces an instance idle for the cell window, not a fresh one", async () => {
    await using r = rig({ stemCells: 1, memoryBudgetMb: 256, memoryAccounting: "declared", cellWindowMs: 10_000 });
    await until(() => r.pool.stats().cells === 1);
    await r.pool.activate(spec("a"));
    await until(() => r.pool.stats().cells === 1);
    // b takes the cell; no room for another: a (idle a moment) is kept.
    await r.pool.activate(spec("b"));
    expect(r.pool.snapshot("b")?.instances[0]?.origin).toBe("cell");
    r.clock.advance(5_000);
    expect(r.pool.stats().cells + r.pool.stats().cellsStarting).toBe(0);
    expect(live(r.pool, "a")).toBe(1);
    // a has been idle 10 s: the next sweep gives its memory to a cell (the next first request's).
    r.clock.advance(6_000);
    await until(() => r.pool.stats().cells === 1);
    expect(live(r.pool, "a")).toBe(0);
    expect(live(r.pool, "b")).toBe(1);
    expect(r.pool.stats().usedMb).toBe(256);
  });

  test("a fixed count stays fixed whatever the takes", async () => {
    await using r = rig({ stemCells: 2 });
    await until(() => r.pool.stats().cells === 2);
    for (let i = 0; i < 4; i++) {
      await r.pool.activate(spec(`f${i}`), { verify: false });
      await until(() => r.pool.stats().cells >= 1);
      await request(r.pool, `f${i}`);
    }
    expect(r.pool.stats().cellsTarget).toBe(2);
  });

  test("grown cells stay within the memory budget and go before any warm instance", async () => {
    await using r = rig({ stemCells: { bun: { min: 1, max: 8 } }, memoryBudgetMb: 128 * 4, memoryAccounting: "declared" });
    await until(() => r.pool.stats().cells === 1);
    for (let i = 0; i < 4; i++) {
      await r.pool.activate(spec(`g${i}`), { verify: false });
      await until(() => r.pool.stats().cellsStarting === 0 && r.pool.stats().cells >= 1);
      expect(await request(r.pool, `g${i}`)).toBe("cell");
      expect(r.pool.stats().usedMb).toBeLessThanOrEqual(512);
    }
    await until(() => r.pool.stats().cellsStarting === 0);
    // Four instances fill the 4 x 128 MiB: the cells grown for the takes gave way, no instance did.
    for (let i = 0; i < 4; i++) expect(live(r.pool, `g${i}`)).toBe(1);
    expect(r.pool.stats().usedMb).toBe(512);
    expect(r.pool.stats().cells).toBe(0);
  });
});

describe("the budget counts measured memory", () => {
  async function fill(r: Rig, n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      await r.pool.activate(spec(`idle-${i}`));
      await r.pool.sampleMemory();
      r.clock.advance(10);
    }
  }

  test("declared: a 1 GiB budget holds 8 instances of 128 MiB; measured (30 MiB + 16 headroom): 20", async () => {
    {
      await using r = rig({ memoryBudgetMb: 1024, memoryAccounting: "declared" });
      await fill(r, 12);
      const warm = Array.from({ length: 12 }, (_, i) => live(r.pool, `idle-${i}`)).reduce((a, b) => a + b, 0);
      expect(warm).toBe(8);
      expect(r.pool.memory()).toMatchObject({ countedMb: 1024, declaredMb: 1024, accounting: "declared" });
    }
    {
      await using r = rig({ memoryBudgetMb: 1024, memoryHeadroomMb: 16 });
      await fill(r, 24);
      const warm = Array.from({ length: 24 }, (_, i) => live(r.pool, `idle-${i}`)).reduce((a, b) => a + b, 0);
      // Each counted at ceil(30 + 16) = 46 MiB once measured, but a version never measured is
      // admitted at its limit: k x 46 + 128 <= 1024 holds up to k = 19, so 20 stay warm.
      expect(warm).toBe(20);
      const m = r.pool.memory();
      expect(m.countedMb).toBe(20 * 46);
      expect(m.declaredMb).toBe(20 * 128);
      expect(m.residentMb).toBe(Math.round((20 * FAKE_RESIDENT_BYTES) / MIB));
      // The next instance of a measured version is counted at what it was seen to use.
      r.pool.retireIdle("idle-23");
      await until(() => live(r.pool, "idle-23") === 0);
      await request(r.pool, "idle-23");
      expect(r.pool.snapshot("idle-23")?.instances[0]?.countedMb).toBe(46);
    }
  });

  test("an instance growing towards its limit is counted at its real size and makes idle ones go first", async () => {
    await using r = rig({ memoryBudgetMb: 1024, memoryHeadroomMb: 16 });
    // The hog may use 512 MiB; minWarm keeps it from being evicted itself.
    await r.pool.activate(spec("hog", { memoryMb: 512, minWarm: 1 }));
    await r.pool.sampleMemory();
    await fill(r, 22);
    // 46 + k x 46 + 128 <= 1024 up to k = 18: 19 others warm (idle-3 .. idle-21).
    expect(r.pool.stats().usedMb).toBe(20 * 46);
    expect(live(r.pool, "idle-2")).toBe(0);
    expect(live(r.pool, "idle-3")).toBe(1);
    const hogId = r.pool.snapshot("hog")?.instances[0]?.id ?? "";
    r.driver.setMemoryUsage(hogId, FAKE_RESIDENT_BYTES + 300 * MIB);
    await r.pool.sampleMemory();
    expect(r.pool.snapshot("hog")?.instances[0]).toMatchObject({ countedMb: 346, residentMb: 330 });
    // 19 x 46 + 346 = 1220 > 1024: the five least recently used go (1220 - 5 x 46 = 990).
    for (let i = 3; i <= 7; i++) expect(live(r.pool, `idle-${i}`)).toBe(0);
    expect(live(r.pool, "idle-8")).toBe(1);
    expect(live(r.pool, "hog")).toBe(1);
    expect(r.pool.stats().usedMb).toBe(990);
  });

  test("memory-time: MiB-seconds per function and for the cells", async () => {
    await using r = rig({ memoryBudgetMb: 4096, memoryHeadroomMb: 16, memoryAccounting: "declared" });
    await r.pool.activate(spec("held"));
    r.clock.advance(10_000);
    // 128 MiB for 10 s.
    expect(r.pool.memorySeconds().get("held")).toBeCloseTo(1280, 6);
  });
});

test("MemoryLedger integrates each owner's figure over time", () => {
  const clock = new FakeClock(0);
  const ledger = new MemoryLedger(clock);
  ledger.add("a", 100);
  clock.advance(2_000);
  ledger.add("a", -50);
  ledger.add("", 30);
  clock.advance(1_000);
  expect(Object.fromEntries(ledger.mbSeconds())).toEqual({ a: 250, "": 30 });
  expect(ledger.used).toBe(80);
  expect(ledger.peak).toBe(100);
  // Never below zero; a deleted function's account goes once it holds nothing.
  ledger.add("a", -500);
  expect(ledger.held("a")).toBe(0);
  ledger.forget("a");
  expect(ledger.mbSeconds().has("a")).toBe(false);
});
