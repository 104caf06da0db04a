/**
 * The scheduler's decisions on a fake clock over a real in-memory store: tick computation
 * (5 and 6 fields, timezones), no replay of missed ticks, the overlap policy, deletion.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { isForgeError } from "../errors.ts";
import { FakeClock } from "../pool/index.ts";
import { asyncStore, openStore } from "../store/index.ts";
import { nextTick, parseScheduleInput } from "./cron.ts";
import { Scheduler } from "./scheduler.ts";

const logger = createConsola({ level: -999 });
const T0 = Date.UTC(2026, 0, 5, 10, 0, 0); // Monday 2026-01-05 10:00:00 UTC

/** Lets the microtask chains started by a timer run to their end (no real I/O is involved). */
const flush = (): Promise<void> => new Promise((r) => setImmediate(r));

interface Call {
  name: string;
  body: string;
  headers: Headers;
  finish(status?: number): void;
}

function harness(start = T0) {
  const clock = new FakeClock(start);
  const sqlite = openStore(":memory:");
  const store = asyncStore(sqlite);
  const calls: Call[] = [];
  let autoStatus: number | undefined = 200;
  const scheduler = new Scheduler({
    schedules: store.schedules,
    logger,
    clock,
    syncEveryMs: 0,
    invoke: async (name, req, kind) => {
      expect(kind).toBe("schedule");
      const body = await req.text();
      if (autoStatus !== undefined) {
        calls.push({ name, body, headers: req.headers, finish: () => {} });
        return new Response("ok", { status: autoStatus });
      }
      return new Promise<Response>((resolve) => calls.push({ name, body, headers: req.headers, finish: (status = 200) => resolve(new Response("done", { status })) }));
    },
  });
  return {
    clock,
    store,
    calls,
    scheduler,
    /** Runs stay in progress until finish() is called. */
    manual: () => void (autoStatus = undefined),
    status: (s: number) => void (autoStatus = s),
    async advance(ms: number) {
      clock.advance(ms);
      await flush();
    },
    [Symbol.dispose]: () => sqlite.close(),
  };
}

describe("cron computation", () => {
  test("5 fields run on the minute, 6 fields on the second", () => {
    expect(nextTick({ cron: "*/5 * * * *", timezone: null }, T0)).toBe(T0 + 5 * 60_000);
    expect(nextTick({ cron: "* * * * * *", timezone: null }, T0)).toBe(T0 + 1000);
    expect(nextTick({ cron: "*/10 * * * * *", timezone: null }, T0 + 1)).toBe(T0 + 10_000);
    expect(nextTick({ cron: "@hourly", timezone: null }, T0)).toBe(T0 + 3_600_000);
  });

  test("a timezone moves the wall clock the expression is read in", () => {
    // 09:00 in Oslo is 08:00 UTC in January (CET, UTC+1).
    expect(nextTick({ cron: "0 9 * * *", timezone: "Europe/Oslo" }, T0)).toBe(Date.UTC(2026, 0, 6, 8, 0, 0));
    expect(nextTick({ cron: "0 9 * * *", timezone: null }, T0)).toBe(Date.UTC(2026, 0, 6, 9, 0, 0));
  });

  test("bad input is a 400 with a hint", () => {
    const cases: [unknown, string][] = [
      [{ cron: "bad" }, "invalid_cron"],
      [{ cron: "61 * * * *" }, "invalid_cron"],
      [{ cron: "* * * * * * *" }, "invalid_cron"],
      [{ cron: "0 0 30 2 *" }, "invalid_cron"],
      [{}, "invalid_cron"],
      [{ cron: 5 }, "invalid_cron"],
      [{ cron: "* * * * *", timezone: "Mars/Phobos" }, "bad_request"],
      [{ cron: "* * * * *", overlap: "queue" }, "bad_request"],
      [{ cron: "* * * * *", every: "1m" }, "bad_request"],
      [[], "bad_request"],
    ];
    for (const [body, code] of cases) {
      let err: unknown;
      try {
        parseScheduleInput(body);
      } catch (e) {
        err = e;
      }
      expect(isForgeError(err) && { status: err.status, code: err.code, hint: Boolean(err.hint) }).toEqual({ status: 400, code: code as never, hint: true });
    }
  });
});

describe("scheduler on a fake clock", () => {
  test("fires each tick with the payload, records runs and the next tick", async () => {
    using h = harness();
    const s = await h.scheduler.create("greet", { cron: "*/10 * * * * *", data: { job: "sync" } });
    expect(s.nextRunAt).toBe(T0 + 10_000);
    expect(s.armed).toBe(true);
    await h.advance(9_999);
    expect(h.calls).toHaveLength(0);
    await h.advance(1);
    expect(h.calls).toHaveLength(1);
    expect(h.calls[0]?.name).toBe("greet");
    expect(JSON.parse(h.calls[0]?.body ?? "")).toEqual({ job: "sync" });
    expect(h.calls[0]?.headers.get("content-type")).toBe("application/json");
    expect(h.calls[0]?.headers.get("x-forge-schedule-tick")).toBe(new Date(T0 + 10_000).toISOString());
    await h.advance(10_000);
    await h.advance(10_000);
    await h.scheduler.whenIdle();
    expect(h.calls).toHaveLength(3);
    const v = await h.scheduler.get(s.id);
    expect(v).toMatchObject({ runs: 3, skipped: 0, lastRunAt: T0 + 30_000, lastStatus: 200, nextRunAt: T0 + 40_000 });
  });

  test("a late timer does not replay the ticks it missed", async () => {
    using h = harness();
    const s = await h.scheduler.create("greet", { cron: "* * * * * *" });
    // One jump of 10 s is a stalled process: one run, then the next tick is after "now".
    await h.advance(10_000);
    await h.scheduler.whenIdle();
    expect(h.calls).toHaveLength(1);
    expect((await h.scheduler.get(s.id)).nextRunAt).toBe(T0 + 11_000);
  });

  test("overlap skip: a tick while the previous run is going is skipped and counted", async () => {
    using h = harness();
    h.manual();
    const s = await h.scheduler.create("slow", { cron: "* * * * * *" });
    await h.advance(1000);
    expect(h.calls).toHaveLength(1);
    await h.advance(1000);
    await h.advance(1000);
    expect(h.calls).toHaveLength(1);
    expect(await h.scheduler.get(s.id)).toMatchObject({ runs: 0, skipped: 2 });
    h.calls[0]?.finish(201);
    await h.scheduler.whenIdle();
    expect(await h.scheduler.get(s.id)).toMatchObject({ runs: 1, skipped: 2, lastStatus: 201, lastRunAt: T0 + 1000 });
    await h.advance(1000);
    expect(h.calls).toHaveLength(2);
    h.calls[1]?.finish();
    await h.scheduler.whenIdle();
  });

  test("overlap allow: every tick runs even while earlier runs are going", async () => {
    using h = harness();
    h.manual();
    const s = await h.scheduler.create("slow", { cron: "* * * * * *", overlap: "allow" });
    await h.advance(1000);
    await h.advance(1000);
    await h.advance(1000);
    expect(h.calls).toHaveLength(3);
    for (const c of h.calls) c.finish(500);
    await h.scheduler.whenIdle();
    expect(await h.scheduler.get(s.id)).toMatchObject({ runs: 3, skipped: 0, lastStatus: 500 });
  });

  test("a failing invoke is recorded with its status and the schedule keeps going", async () => {
    using h = harness();
    h.status(503);
    const s = await h.scheduler.create("down", { cron: "* * * * * *" });
    await h.advance(1000);
    await h.advance(1000);
    await h.scheduler.whenIdle();
    expect(await h.scheduler.get(s.id)).toMatchObject({ runs: 2, lastStatus: 503 });
  });

  test("delete, and deleting a function's schedules, disarm them; a restart re-arms what is stored", async () => {
    using h = harness();
    const a = await h.scheduler.create("a", { cron: "* * * * * *" });
    const b = await h.scheduler.create("b", { cron: "* * * * * *" });
    await h.scheduler.delete(a.id);
    await expect(h.scheduler.get(a.id)).rejects.toThrow(/not found/);
    await h.store.schedules.deleteForFunction("b");
    h.scheduler.disarmFunction("b");
    expect(h.clock.pending).toBe(0);
    await h.advance(5000);
    expect(h.calls).toHaveLength(0);

    const c = await h.scheduler.create("c", { cron: "* * * * * *" });
    await h.scheduler.close();
    const again = new Scheduler({ schedules: h.store.schedules, logger, clock: h.clock, syncEveryMs: 0, invoke: async () => new Response("ok") });
    await again.start();
    expect((await again.list()).map((v) => [v.id, v.armed])).toEqual([[c.id, true]]);
    expect(await again.list("b")).toEqual([]);
    expect(b.id).not.toBe(c.id);
    await again.close();
  });

  test("a schedule deleted behind its back (another node) stops at its next tick; sync arms new ones", async () => {
    using h = harness();
    const s = await h.scheduler.create("x", { cron: "* * * * * *" });
    await h.store.schedules.delete(s.id);
    await h.advance(1000);
    expect(h.calls).toHaveLength(0);
    expect(h.clock.pending).toBe(0);
    await h.store.schedules.create({ id: "sch-other", function: "y", cron: "* * * * * *", timezone: null, payload: null, overlap: "skip" });
    await h.scheduler.sync();
    await h.advance(1000);
    await h.scheduler.whenIdle();
    expect(h.calls.map((c) => c.name)).toEqual(["y"]);
  });

  test("ticks far away arm in steps and still land on time", async () => {
    using h = harness();
    const s = await h.scheduler.create("yearly", { cron: "0 0 1 1 *" });
    const at = Date.UTC(2027, 0, 1);
    expect(s.nextRunAt).toBe(at);
    await h.advance(at - T0 - 1);
    expect(h.calls).toHaveLength(0);
    await h.advance(1);
    await h.scheduler.whenIdle();
    expect(h.calls).toHaveLength(1);
  });
});

describe("scheduler with a store that stops answering", () => {
  test("a failing store in a tick or a sync is logged as a warning and the next tick runs", async () => {
    const clock = new FakeClock(T0);
    const sqlite = openStore(":memory:");
    const store = asyncStore(sqlite);
    let down = false;
    const schedules = {
      ...store.schedules,
      get: (id: string) => (down ? Promise.reject(new Error("connect ECONNREFUSED")) : store.schedules.get(id)),
      list: (fn?: string) => (down ? Promise.reject(new Error("connect ECONNREFUSED")) : store.schedules.list(fn)),
    };
    const warnings: string[] = [];
    const log = createConsola({ level: 5, reporters: [{ log: (o) => void (o.type === "warn" && warnings.push(o.args.map(String).join(" "))) }] });
    const calls: string[] = [];
    const scheduler = new Scheduler({ schedules, logger: log, clock, syncEveryMs: 500, invoke: async (name) => (calls.push(name), new Response("ok")) });
    try {
      await scheduler.start();
      const s = await scheduler.create("greet", { cron: "* * * * * *" });
      down = true;
      clock.advance(1000);
      await flush();
      await scheduler.whenIdle();
      expect(calls).toHaveLength(0);
      expect(warnings.some((w) => w.includes(`tick of schedule ${s.id} failed`) && w.includes("did not answer"))).toBe(true);
      expect(warnings.some((w) => w.includes("could not re-read schedules"))).toBe(true);
      down = false;
      clock.advance(1000);
      await flush();
      await scheduler.whenIdle();
      expect(calls).toEqual(["greet"]);
      expect(await scheduler.get(s.id)).toMatchObject({ runs: 1, armed: true });
      // A failing read through the API is a 503 store_unavailable.
      down = true;
      await expect(scheduler.get(s.id)).rejects.toMatchObject({ status: 503, code: "store_unavailable" });
      down = false;
    } finally {
      await scheduler.close();
      sqlite.close();
    }
  });
});
