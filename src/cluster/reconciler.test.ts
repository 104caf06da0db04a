/** When the reconciler converges what (the converging itself is the FunctionService's). */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import type { Change, ChangeBus } from "./changes.ts";
import { Reconciler } from "./reconciler.ts";
import { until } from "../../test/_helpers.ts";

const logger = createConsola({ level: -999 });

/** A bus in memory: what `deliver` hands in reaches the reconciler as if from Redis. */
function memoryBus(): ChangeBus & { deliver(c: Change): void; resync(): void } {
  const changes: ((c: Change) => void)[] = [];
  const resyncs: (() => void)[] = [];
  return {
    publish: async (c) => changes.forEach((l) => l(c)),
    onChange: (l) => void changes.push(l),
    onResync: (l) => void resyncs.push(l),
    ready: async () => {},
    deliver: (c) => changes.forEach((l) => l(c)),
    resync: () => resyncs.forEach((l) => l()),
    [Symbol.asyncDispose]: async () => {},
  };
}

function gate(): { promise: Promise<void>; open: () => void } {
  let open = (): void => {};
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

describe("Reconciler", () => {
  test("a change converges its function; changes arriving during a run coalesce into one more run", async () => {
    const runs: string[] = [];
    const first = gate();
    const bus = memoryBus();
    await using r = new Reconciler({
      logger,
      bus,
      names: async () => [],
      syncSchedules: async () => {},
      converge: async (name) => {
        runs.push(name);
        if (runs.length === 1) await first.promise;
      },
    });
    bus.deliver({ kind: "function", name: "a", node: "n1" });
    await until(() => runs.length === 1, 5000, "the first run under way");
    const during = [r.converge("a"), r.converge("a"), r.converge("a")];
    first.open();
    await Promise.all(during);
    // the first run, then exactly one more for the three that came while it ran
    expect(runs).toEqual(["a", "a"]);
    await r.converge("a");
    expect(runs).toEqual(["a", "a", "a"]);
  });

  test("a failed converge is logged and does not stop the next", async () => {
    let calls = 0;
    await using r = new Reconciler({
      logger,
      names: async () => ["x"],
      syncSchedules: async () => {},
      converge: async () => {
        calls++;
        if (calls === 1) throw new Error("the store went away");
      },
    });
    await r.converge("x");
    await r.converge("x");
    expect(calls).toBe(2);
  });

  test("a full pass converges every function and re-reads schedules; a resync runs one; a failing store is survived", async () => {
    const seen: string[] = [];
    let schedules = 0;
    let storeUp = true;
    const bus = memoryBus();
    await using r = new Reconciler({
      logger,
      bus,
      names: async () => {
        if (!storeUp) throw new Error("connection refused");
        return ["a", "b", "c"];
      },
      syncSchedules: async () => void schedules++,
      converge: async (name) => void seen.push(name),
    });
    await r.reconcileAll();
    expect(seen.sort()).toEqual(["a", "b", "c"]);
    expect(schedules).toBe(1);
    storeUp = false;
    await r.reconcileAll(); // no throw
    storeUp = true;
    bus.resync();
    await r.reconcileAll(); // joins the pass the resync started
    expect(seen.length).toBe(6);
    bus.deliver({ kind: "schedules", node: "n2" });
    expect(schedules).toBeGreaterThanOrEqual(3);
  });
});

test("a stop during a full pass waits for the converge under way only, not for those the pass had queued", async () => {
  const started: string[] = [];
  const first = gate();
  const r = new Reconciler({
    logger,
    concurrency: 1,
    names: async () => ["a", "b", "c"],
    syncSchedules: async () => {},
    converge: async (name) => {
      started.push(name);
      await first.promise;
    },
  });
  const pass = r.reconcileAll();
  await until(() => started.length === 1, 5000, "the pass's first converge");
  const stopped = r[Symbol.asyncDispose]();
  first.open();
  // A stop that waited for the queued converges (which never start) would hang: the test's timeout fails it.
  await stopped;
  await pass;
  expect(started).toEqual(["a"]);
}, 5000);
