/**
 * The pool's decision logic with the fake driver and a fake clock: bursts, caps, queue
 * overflow and timeout, keep-alive, minWarm, stem cells, the memory budget, crashes and
 * version switches.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { until } from "../../test/_helpers.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { FakeClock } from "./clock.ts";
import { createFakeDriver, type FakeDriver, type FakeDriverOptions } from "./fake-driver.ts";
import { fixedKeepAlive } from "./keep-alive.ts";
import { PoolManager, type PoolManagerOptions } from "./pool-manager.ts";
import type { Lease, PoolSpec } from "./types.ts";

const quiet = createConsola({ level: -999 });

function spec(fn: string, over: Partial<PoolSpec> = {}): PoolSpec {
  return {
    function: fn,
    version: 1,
    runtime: "bun",
    concurrency: 8,
    minWarm: 0,
    maxInstances: 100,
    memoryMb: 128,
    timeoutMs: 30_000,
    env: { FN: fn },
    bundlePath: `/bundles/${fn}.mjs`,
    ...over,
  };
}

interface Rig extends AsyncDisposable {
  pool: PoolManager;
  driver: FakeDriver;
  clock: FakeClock;
  /** Lets held starts through. */
  releaseStarts(): void;
}

/** Decision tests of the request path start from a pool with no instance (no verification start). */
const IDLE = { verify: false } as const;

function rig(options: Partial<PoolManagerOptions> = {}, driverOptions: { hold?: boolean } & Pick<FakeDriverOptions, "failStart" | "kindOf"> = {}): Rig {
  let gate: { promise: Promise<void>; resolve: () => void } = Promise.withResolvers<void>();
  if (!driverOptions.hold) gate.resolve();
  const { hold: _hold, ...fakeOptions } = driverOptions;
  const driver = createFakeDriver({ startDelayMs: () => gate.promise, ...fakeOptions });
  const clock = new FakeClock();
  const pool = new PoolManager({
    driver,
    logger: quiet,
    clock,
    stemCells: 0,
    memoryBudgetMb: 1_000_000,
    keepAlive: fixedKeepAlive(60_000),
    queueTimeoutMs: 5_000,
    readBundle: async (p) => `export default { fetch() { return new Response(${JSON.stringify(p)}) } }`,
    ...options,
  });
  pool.start();
  return {
    pool,
    driver,
    clock,
    releaseStarts: () => {
      gate.resolve();
      gate = { promise: Promise.resolve(), resolve: () => {} };
    },
    async [Symbol.asyncDispose]() {
      await pool.dispose();
      await driver.dispose();
    },
  };
}

async function settle<T>(items: (T | Promise<T>)[]): Promise<PromiseSettledResult<T>[]> {
  return Promise.allSettled(items.map((i) => Promise.resolve(i)));
}

function acquireMany(pool: PoolManager, fn: string, n: number): (Lease | Promise<Lease>)[] {
  const out: (Lease | Promise<Lease>)[] = [];
  for (let i = 0; i < n; i++) {
    let p: Lease | Promise<Lease>;
    try {
      p = pool.acquire(fn);
    } catch (err) {
      p = Promise.reject(err);
    }
    // Leases still waiting when a test ends are rejected by dispose(): that is expected.
    if (p instanceof Promise) p.catch(() => {});
    out.push(p);
  }
  return out;
}

describe("autoscaling", () => {
  test("a 200-request burst at concurrency 8 makes exactly 25 instances, never more", async () => {
    await using r = rig({}, { hold: true });
    await r.pool.activate(spec("burst"), IDLE);
    const leases = acquireMany(r.pool, "burst", 200);
    // All 25 starts were asked for at once, while none had finished.
    expect(r.pool.snapshot("burst")?.instances.length).toBe(25);
    r.releaseStarts();
    const results = await settle(leases);
    expect(results.every((x) => x.status === "fulfilled")).toBe(true);
    expect(r.driver.started).toBe(25);
    const snap = r.pool.snapshot("burst");
    expect(snap?.instances.length).toBe(25);
    expect(snap?.instances.every((i) => i.inFlight === 8)).toBe(true);
    expect(snap?.starts.cold).toBe(200);
    // A second wave after release reuses the same instances.
    for (const x of results) if (x.status === "fulfilled") x.value.release();
    await settle(acquireMany(r.pool, "burst", 200));
    expect(r.driver.started).toBe(25);
    expect(r.pool.snapshot("burst")?.starts.warm).toBe(200);
  });

  test("maxInstances caps the scale-up; the rest queue and are served as slots free up", async () => {
    await using r = rig();
    await r.pool.activate(spec("capped", { maxInstances: 10 }), IDLE);
    const leases = acquireMany(r.pool, "capped", 200);
    await until(() => r.pool.snapshot("capped")?.inFlight === 80, 5000, "80 in flight");
    expect(r.driver.started).toBe(10);
    expect(r.pool.snapshot("capped")?.queued).toBe(120);
    // Releasing the first 80 lets the next 80 in, in order, on the same 10 instances.
    const first = (await settle(leases.slice(0, 80))).map((x) => (x.status === "fulfilled" ? x.value : undefined));
    for (const l of first) l?.release();
    await until(() => r.pool.snapshot("capped")?.queued === 40, 5000, "40 still queued");
    expect(r.driver.started).toBe(10);
  });

  test("overflow past maxQueue is a 429", async () => {
    await using r = rig({ maxQueue: 5 });
    await r.pool.activate(spec("small", { maxInstances: 1, concurrency: 1 }), IDLE);
    const held = acquireMany(r.pool, "small", 5); // all 5 wait: the one instance is still starting
    let err: unknown;
    try {
      await r.pool.acquire("small");
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ForgeError);
    expect((err as ForgeError).status).toBe(429);
    const first = await held[0];
    first?.release();
  });

  test("a request waiting past the queue timeout gets a 503", async () => {
    await using r = rig({ queueTimeoutMs: 1000 });
    await r.pool.activate(spec("slow", { maxInstances: 1, concurrency: 1 }), IDLE);
    const first = await r.pool.acquire("slow");
    const waiting = Promise.resolve(r.pool.acquire("slow"));
    waiting.catch(() => {});
    r.clock.advance(999);
    expect(r.pool.snapshot("slow")?.queued).toBe(1);
    r.clock.advance(1);
    const err = await waiting.then(() => undefined, (e: unknown) => e);
    expect((err as ForgeError).status).toBe(503);
    expect((err as ForgeError).code).toBe("queue_timeout");
    first.release();
  });

  test("idle instances are stopped after the keep-alive; minWarm instances are kept", async () => {
    await using r = rig({ keepAlive: fixedKeepAlive(60_000), sweepEveryMs: 1000 });
    await r.pool.activate(spec("ka", { minWarm: 2 }), IDLE);
    expect(r.driver.started).toBe(2); // minWarm is started at deploy
    const leases = await settle(acquireMany(r.pool, "ka", 40));
    expect(r.driver.started).toBe(5);
    for (const x of leases) if (x.status === "fulfilled") x.value.release();
    r.clock.advance(59_000);
    expect(r.pool.snapshot("ka")?.instances.length).toBe(5);
    r.clock.advance(2_000);
    expect(r.pool.snapshot("ka")?.instances.length).toBe(2);
    await until(() => r.driver.live().length === 2, 5000, "3 instances stopped");
    r.clock.advance(10 * 60_000);
    expect(r.pool.snapshot("ka")?.instances.length).toBe(2);
  });
});

describe("stem cells", () => {
  test("the first request takes a cell and specializes it; the cell pool refills", async () => {
    await using r = rig({ stemCells: 2 });
    await until(() => r.driver.live().length === 2, 5000, "2 cells");
    const cells = r.driver.live();
    await r.pool.activate(spec("fresh"), IDLE);
    const lease = await r.pool.acquire("fresh");
    expect(lease.start).toBe("cell");
    expect(cells).toContain(lease.instance.id);
    const sp = r.driver.specialization(lease.instance.id);
    expect(sp?.function).toBe("fresh");
    expect(sp?.env).toEqual({ FN: "fresh" });
    expect(sp?.code).toContain("/bundles/fresh.mjs");
    // Refilled in the background: two cells again besides the specialized one.
    await until(() => r.driver.live().length === 3, 5000, "cells refilled");
    expect(r.pool.stats().cells).toBe(2);
    lease.release();
    const again = await r.pool.acquire("fresh");
    expect(again.start).toBe("warm");
    expect(again.instance.id).toBe(lease.instance.id);
    again.release();
  });

  test("a cell is never handed to a second function", async () => {
    await using r = rig({ stemCells: 1 });
    await until(() => r.pool.stats().cells === 1, 5000, "1 cell");
    await r.pool.activate(spec("a"), IDLE);
    await r.pool.activate(spec("b"), IDLE);
    const a = await r.pool.acquire("a");
    const b = await r.pool.acquire("b");
    expect(a.instance.id).not.toBe(b.instance.id);
    expect(r.driver.specialization(b.instance.id)?.function ?? "b").toBe("b");
    expect(r.driver.specialization(a.instance.id)?.function).toBe("a");
    a.release();
    b.release();
  });

  test("with no cell left, the request is a true cold start", async () => {
    await using r = rig({ stemCells: 0 });
    await r.pool.activate(spec("cold"), IDLE);
    const lease = await r.pool.acquire("cold");
    expect(lease.start).toBe("cold");
    lease.release();
  });
});

describe("memory budget", () => {
  test("idle instances of other functions are evicted least recently used first", async () => {
    await using r = rig({ memoryBudgetMb: 3 * 128 });
    for (const fn of ["a", "b", "c", "d"]) await r.pool.activate(spec(fn), IDLE);
    const a = await r.pool.acquire("a");
    r.clock.advance(10);
    const b = await r.pool.acquire("b");
    r.clock.advance(10);
    const c = await r.pool.acquire("c");
    a.release();
    r.clock.advance(10);
    b.release();
    // The budget is full (3 x 128); d needs room: a is the least recently used idle one.
    const d = await r.pool.acquire("d");
    expect(r.pool.snapshot("a")?.instances.length).toBe(0);
    expect(r.pool.snapshot("b")?.instances.length).toBe(1);
    expect(r.pool.stats().usedMb).toBe(3 * 128);
    c.release();
    d.release();
  });

  test("when nothing can be evicted, requests queue and then get a 503", async () => {
    await using r = rig({ memoryBudgetMb: 128, queueTimeoutMs: 1000 });
    await r.pool.activate(spec("x"), IDLE);
    await r.pool.activate(spec("y"), IDLE);
    const x = await r.pool.acquire("x"); // busy: not evictable
    const waiting = Promise.resolve(r.pool.acquire("y"));
    waiting.catch(() => {});
    expect(r.pool.snapshot("y")?.instances.length).toBe(0);
    r.clock.advance(1000);
    expect(((await waiting.catch((e: unknown) => e)) as ForgeError).status).toBe(503);
    x.release();
  });
});

describe("health and version switches", () => {
  test("a crashed instance leaves the pool at once and is replaced when minWarm asks", async () => {
    await using r = rig();
    await r.pool.activate(spec("crashy", { minWarm: 1 }), IDLE);
    const before = r.pool.snapshot("crashy")?.instances[0]?.id;
    expect(before).toBeTruthy();
    await r.driver.crash(before ?? "");
    await until(() => {
      const s = r.pool.snapshot("crashy");
      return s?.instances.length === 1 && s.instances[0]?.id !== before && s.instances[0]?.state === "ready";
    }, 5000, "replacement");
    const lease = await r.pool.acquire("crashy");
    expect(lease.instance.id).not.toBe(before);
    lease.release();
  });

  test("a lease that fails on an instance that still answers its health check keeps it: one odd request stops nothing", async () => {
    await using r = rig();
    await r.pool.activate(spec("odd"), IDLE);
    const l1 = await r.pool.acquire("odd");
    const id = l1.instance.id;
    l1.fail();
    const l2 = await r.pool.acquire("odd");
    expect(l2.instance.id).toBe(id);
    l2.release();
    // The check ran and found it healthy: still there, still the only one.
    await until(async () => (await r.driver.list()).length === 1 && r.pool.snapshot("odd")?.instances.length === 1, 5000, "the instance kept");
    expect(r.driver.started).toBe(1);
  });

  test("a lease that fails on an instance that no longer answers takes it out; the next request gets another", async () => {
    await using r = rig();
    await r.pool.activate(spec("flaky"), IDLE);
    const l1 = await r.pool.acquire("flaky");
    const id = l1.instance.id;
    await r.driver.hang(id);
    l1.fail();
    await until(() => r.pool.snapshot("flaky")?.instances.length === 0, 10_000, "the broken instance out");
    const l2 = await r.pool.acquire("flaky");
    expect(l2.instance.id).not.toBe(id);
    l2.release();
  });

  test("a request failed by an instance stopped for its memory learns why, whether the exit notice comes after the failure or before", async () => {
    await using r = rig();
    await r.pool.activate(spec("hungry", { memoryMb: 64, concurrency: 1 }), IDLE);
    // The notice after: the connection closed first (the usual order on a busy machine).
    const l1 = await r.pool.acquire("hungry");
    l1.fail();
    const why = l1.exited();
    await r.driver.crash(l1.instance.id, 137, "oom");
    expect(await why).toEqual({ reason: "oom", code: 137, memoryMb: 64 });
    // The notice before: known at once.
    const l2 = await r.pool.acquire("hungry");
    expect(l2.instance.id).not.toBe(l1.instance.id);
    await r.driver.crash(l2.instance.id, 137, "oom");
    l2.fail();
    expect(await l2.exited()).toEqual({ reason: "oom", code: 137, memoryMb: 64 });
  });

  test("a request failed by an instance that still answers learns nothing, as soon as its health check says so", async () => {
    await using r = rig();
    await r.pool.activate(spec("odd"), IDLE);
    const l1 = await r.pool.acquire("odd");
    l1.fail();
    // The fake clock never reaches EXIT_NOTICE_MS: only the health check can settle it.
    expect(await l1.exited()).toBeUndefined();
    expect(r.pool.snapshot("odd")?.instances.length).toBe(1);
  });

  test("a new version is warmed before traffic moves; the old one drains in-flight requests, then stops", async () => {
    await using r = rig();
    await r.pool.activate(spec("sw", { version: 1 }));
    const inflight = await r.pool.acquire("sw");
    const oldId = inflight.instance.id;
    await r.pool.activate(spec("sw", { version: 2 }));
    // The new version already has a ready instance; new requests go there.
    const next = r.pool.acquire("sw");
    expect(next).not.toBeInstanceOf(Promise);
    expect((next as Lease).version).toBe(2);
    expect((next as Lease).start).toBe("warm");
    // The old instance is still serving its in-flight request...
    expect(r.driver.live()).toContain(oldId);
    inflight.release();
    // ...and stops once it is done.
    await until(() => !r.driver.live().includes(oldId), 5000, "old instance stopped");
    (next as Lease).release();
  });
});

describe("verified activation", () => {
  test("a version none of whose instances start is not activated: the active one keeps serving", async () => {
    await using r = rig({}, { failStart: (s) => s.version === 2 });
    await r.pool.activate(spec("v", { version: 1 }));
    const err = await r.pool.activate(spec("v", { version: 2 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ForgeError);
    expect((err as ForgeError).code).toBe(ErrorCode.LoadFailed);
    expect((err as ForgeError).message).toContain("failed to start");
    const lease = await r.pool.acquire("v");
    expect(lease.version).toBe(1);
    lease.release();
    // Nothing of v2 is left running.
    expect(r.driver.live().length).toBe(1);
  });

  test("a first version that does not start leaves the function with no active pool", async () => {
    await using r = rig({}, { failStart: () => true });
    await expect(r.pool.activate(spec("never"))).rejects.toThrow("did not start");
    expect(r.pool.pool("never")).toBeUndefined();
  });

  test("activation starts one instance even with minWarm 0; restoring after a restart starts none", async () => {
    await using r = rig();
    await r.pool.activate(spec("one"));
    expect(r.driver.started).toBe(1);
    await r.pool.activate(spec("restored"), IDLE);
    expect(r.driver.started).toBe(1);
  });

  test("a Lambda module gets the Lambda concurrency when the config set none; a fetch module keeps its own", async () => {
    await using r = rig({}, { kindOf: (s) => (s.function === "lam" ? "lambda" : "fetch") });
    expect(await r.pool.activate(spec("lam", { concurrency: 8, lambdaConcurrency: 1 }))).toEqual({ kind: "lambda", concurrency: 1 });
    expect(r.pool.pool("lam")?.spec.concurrency).toBe(1);
    expect(await r.pool.activate(spec("web", { concurrency: 8, lambdaConcurrency: 1 }))).toEqual({ kind: "fetch", concurrency: 8 });
    // Four requests at once on a Lambda function: four instances, one event each.
    const leases = await settle(acquireMany(r.pool, "lam", 4));
    const ids = new Set(leases.map((x) => (x.status === "fulfilled" ? x.value.instance.id : "failed")));
    expect(ids.size).toBe(4);
    for (const x of leases) if (x.status === "fulfilled") x.value.release();
  });

  test("no memory for the instance that would verify a version is a 503, not a failed load", async () => {
    await using r = rig({ memoryBudgetMb: 128 });
    await r.pool.activate(spec("busy"));
    const held = await r.pool.acquire("busy");
    const err = await r.pool.activate(spec("late")).catch((e: unknown) => e);
    expect((err as ForgeError).code).toBe(ErrorCode.ServiceUnavailable);
    expect((err as ForgeError).status).toBe(503);
    held.release();
  });

  test("a retired instance's memory stays counted until it has stopped (its waitUntil work done)", async () => {
    const gate = Promise.withResolvers<void>();
    let draining = false;
    const driver = createFakeDriver({
      handler: async (request) => {
        if (new URL(request.url).pathname !== "/__forge/drain") return new Response("ok");
        draining = true;
        await gate.promise;
        return Response.json({ pending: 0 });
      },
    });
    const pool = new PoolManager({ driver, logger: quiet, clock: new FakeClock(), stemCells: 0, memoryBudgetMb: 1_000, keepAlive: fixedKeepAlive(60_000) });
    pool.start();
    try {
      await pool.activate(spec("w", { version: 1 }));
      expect(pool.stats().usedMb).toBe(128);
      await pool.activate(spec("w", { version: 2 }));
      // v1's instance drains (its waitUntil work holds it): both count.
      await until(() => draining, 5000, "the drain of v1's instance");
      expect(pool.stats().usedMb).toBe(256);
      expect(pool.stats().stopping).toBe(1);
      gate.resolve();
      await until(() => pool.stats().stopping === 0, 5000, "v1's instance stopped");
      expect(pool.stats().usedMb).toBe(128);
    } finally {
      await pool.dispose();
      await driver.dispose();
    }
  });
});
