/**
 * The store's contract: what every AsyncStore (SQLite through asyncStore, Postgres) must do,
 * run against each by store-sqlite.test.ts and store-pg.test.ts. It tests behaviour seen
 * through the repositories only; what is particular to one database (SQLite's file, its
 * pragmas, rows written by older versions) stays in that store's own tests.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import type { FunctionConfig } from "../build/function-config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { RecordColumns } from "./record-batch.ts";
import type { AsyncStore, InvocationRecord, NewVersion, RecordBatch } from "./types.ts";

export interface OpenedStore {
  store: AsyncStore;
  /** Closes the store and lets go of what open() made (a file, a database). */
  close(): Promise<void>;
}

export function config(name: string, over: Partial<FunctionConfig> = {}): FunctionConfig {
  return {
    name,
    entry: "index.ts",
    runtime: "bun",
    concurrency: 8,
    minWarm: 0,
    maxInstances: 10,
    timeoutMs: 30_000,
    memoryMb: 128,
    env: {},
    databases: [],
    ...over,
  };
}

export function newVersion(name: string, n: number, over: Partial<FunctionConfig> = {}): NewVersion {
  return { digest: `sha256-${name}-${n}`, config: config(name, over), artifact: `bundles/${name}/${n}.js`, image: null };
}

export function invocation(id: string, over: Partial<InvocationRecord> = {}): InvocationRecord {
  return {
    id,
    function: "greet",
    version: 1,
    instance: "i-1",
    start: "warm",
    kind: "sync",
    state: "done",
    status: 200,
    attempts: 1,
    queueWaitMs: 0,
    durationMs: 3,
    bytesIn: 10,
    bytesOut: 20,
    payload: null,
    result: null,
    error: null,
    createdAt: 1_000,
    updatedAt: 1_000,
    ...over,
  };
}

function batch(...records: InvocationRecord[]): RecordBatch {
  const columns = new RecordColumns();
  for (const r of records) columns.add(r);
  return { function: records[0]?.function ?? "greet", firstAt: columns.firstAt, lastAt: columns.lastAt, count: columns.count, data: columns.encode() };
}

/** The rejection of `p` (fails the test when it resolves). */
async function rejection(p: Promise<unknown>): Promise<unknown> {
  return await p.then(
    () => {
      throw new Error("expected a rejection");
    },
    (err: unknown) => err,
  );
}

/** Registers the contract's tests for the store `open` gives, each test on a fresh one. */
export function storeContract(name: string, open: () => Promise<OpenedStore>): void {
  describe(`store contract: ${name}`, () => {
    let opened: OpenedStore;
    let store: AsyncStore;

    beforeEach(async () => {
      opened = await open();
      store = opened.store;
    });
    afterEach(async () => {
      await opened.close();
    });

    describe("functions", () => {
      test("ensure creates once, then returns the existing record", async () => {
        const a = await store.functions.ensure("greet", config("greet", { memoryMb: 64 }));
        expect(a).toMatchObject({ name: "greet", activeVersion: null, config: { memoryMb: 64 } });
        const b = await store.functions.ensure("greet", config("greet", { memoryMb: 256 }));
        expect(b.config.memoryMb).toBe(64);
        expect(b.createdAt).toBe(a.createdAt);
        expect((await store.functions.list()).map((f) => f.name)).toEqual(["greet"]);
        expect(await store.functions.get("nope")).toBeUndefined();
      });

      test("list is newest first", async () => {
        await store.functions.ensure("first", config("first"));
        await Bun.sleep(2);
        await store.functions.ensure("second", config("second"));
        expect((await store.functions.list()).map((f) => f.name)).toEqual(["second", "first"]);
      });

      test("updateConfig changes the config; unknown function is a 404", async () => {
        await store.functions.ensure("greet", config("greet"));
        const updated = await store.functions.updateConfig("greet", config("greet", { env: { A: "1" }, minWarm: 2 }));
        expect(updated.config).toEqual(config("greet", { env: { A: "1" }, minWarm: 2 }));
        expect((await store.functions.get("greet"))?.config.minWarm).toBe(2);
        const err = await rejection(store.functions.updateConfig("nope", config("nope")));
        expect(err).toBeInstanceOf(ForgeError);
        expect(err).toMatchObject({ code: ErrorCode.FunctionNotFound, status: 404 });
      });
    });

    describe("versions", () => {
      test("are numbered 1, 2, 3 per function, independently", async () => {
        await store.functions.ensure("a", config("a"));
        await store.functions.ensure("b", config("b"));
        expect((await store.versions.create("a", newVersion("a", 1))).version).toBe(1);
        expect((await store.versions.create("a", newVersion("a", 2))).version).toBe(2);
        expect((await store.versions.create("b", newVersion("b", 1))).version).toBe(1);
        const a3 = await store.versions.create("a", newVersion("a", 3));
        expect(a3).toMatchObject({ function: "a", version: 3, digest: "sha256-a-3", active: false, image: null, status: "starting", error: null });
        expect(await store.versions.get("a", 3)).toEqual(a3);
        expect((await store.versions.list("a")).map((v) => v.version)).toEqual([3, 2, 1]);
        expect((await store.versions.list("b")).map((v) => v.version)).toEqual([1]);
        expect((await store.versions.get("a", 2))?.artifact).toBe("bundles/a/2.js");
        expect(await store.versions.get("a", 9)).toBeUndefined();
      });

      test("two concurrent creates on one function get distinct numbers", async () => {
        await store.functions.ensure("greet", config("greet"));
        const made = await Promise.all(Array.from({ length: 8 }, (_, i) => store.versions.create("greet", newVersion("greet", i))));
        expect(made.map((v) => v.version).sort((x, y) => x - y)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
        expect(await store.versions.list("greet")).toHaveLength(8);
      });

      test("numbers are never reused after a discard of the newest", async () => {
        await store.functions.ensure("a", config("a"));
        await store.versions.create("a", newVersion("a", 1));
        await store.versions.create("a", newVersion("a", 2));
        await store.versions.activate("a", 2);
        await store.versions.create("a", newVersion("a", 3));
        await store.versions.discard("a", 3);
        expect(await store.versions.get("a", 3)).toBeUndefined();
        expect((await store.versions.create("a", newVersion("a", 4))).version).toBe(4);
      });

      test("create for an unknown function is a 404", async () => {
        const err = await rejection(store.versions.create("ghost", newVersion("ghost", 1)));
        expect(err).toBeInstanceOf(ForgeError);
        expect((err as ForgeError).code).toBe(ErrorCode.FunctionNotFound);
        expect((err as ForgeError).status).toBe(404);
      });

      test("activate flips the flags, the function's activeVersion and its config", async () => {
        await store.functions.ensure("greet", config("greet"));
        await store.versions.create("greet", newVersion("greet", 1, { memoryMb: 64 }));
        await store.versions.create("greet", newVersion("greet", 2, { memoryMb: 256, env: { V: "2" } }));

        const v1 = await store.versions.activate("greet", 1);
        expect(v1.active).toBe(true);
        expect(await store.functions.get("greet")).toMatchObject({ activeVersion: 1, config: { memoryMb: 64 } });

        await store.versions.activate("greet", 2);
        expect((await store.versions.list("greet")).map((v) => [v.version, v.active])).toEqual([
          [2, true],
          [1, false],
        ]);
        const fn = await store.functions.get("greet");
        expect(fn?.activeVersion).toBe(2);
        expect(fn?.config).toEqual(config("greet", { memoryMb: 256, env: { V: "2" } }));

        // Rollback: back to 1, only 1 active.
        await store.versions.activate("greet", 1);
        expect((await store.versions.list("greet")).filter((v) => v.active).map((v) => v.version)).toEqual([1]);
        expect((await store.functions.get("greet"))?.config.memoryMb).toBe(64);
      });

      test("activate of an unknown version throws VersionNotFound 404 with a hint and changes nothing", async () => {
        await store.functions.ensure("greet", config("greet"));
        await store.versions.create("greet", newVersion("greet", 1));
        await store.versions.activate("greet", 1);
        const err = await rejection(store.versions.activate("greet", 7));
        expect(err).toBeInstanceOf(ForgeError);
        expect(err).toMatchObject({ code: ErrorCode.VersionNotFound, status: 404 });
        expect((err as ForgeError).hint).toContain("1");
        expect((await store.functions.get("greet"))?.activeVersion).toBe(1);
        expect((await store.versions.get("greet", 1))?.active).toBe(true);
      });

      test("concurrent activations leave exactly one version active", async () => {
        await store.functions.ensure("greet", config("greet"));
        for (let i = 1; i <= 4; i++) await store.versions.create("greet", newVersion("greet", i));
        await Promise.all([1, 2, 3, 4, 2, 3].map((n) => store.versions.activate("greet", n)));
        const active = (await store.versions.list("greet")).filter((v) => v.active).map((v) => v.version);
        expect(active).toHaveLength(1);
        expect((await store.functions.get("greet"))?.activeVersion).toBe(active[0] as number);
      });

      test("discard refuses the active version with a 409; an unknown one is a no-op", async () => {
        await store.functions.ensure("greet", config("greet"));
        await store.versions.create("greet", newVersion("greet", 1));
        await store.versions.activate("greet", 1);
        const err = await rejection(store.versions.discard("greet", 1));
        expect(err).toBeInstanceOf(ForgeError);
        expect(err).toMatchObject({ code: ErrorCode.Conflict, status: 409 });
        expect(await store.versions.get("greet", 1)).toBeDefined();
        await store.versions.discard("greet", 99);
      });

      test("setImage and settle: ready with a config, or failed with why", async () => {
        await store.functions.ensure("greet", config("greet"));
        await store.versions.create("greet", newVersion("greet", 1));
        await store.versions.create("greet", newVersion("greet", 2));
        await store.versions.setImage("greet", 1, "forge/fn-greet:v1");
        await store.versions.settle("greet", 1, { status: "ready", config: config("greet", { memoryMb: 512 }) });
        expect(await store.versions.get("greet", 1)).toMatchObject({ image: "forge/fn-greet:v1", status: "ready", error: null, config: { memoryMb: 512 } });
        await store.versions.settle("greet", 2, { status: "failed", error: "SyntaxError: nope" });
        expect(await store.versions.get("greet", 2)).toMatchObject({ image: null, status: "failed", error: "SyntaxError: nope", config: { memoryMb: 128 } });
        // Ready without a config keeps the deployed one.
        await store.versions.settle("greet", 2, { status: "ready" });
        expect(await store.versions.get("greet", 2)).toMatchObject({ status: "ready", error: null, config: { memoryMb: 128 } });
        await store.versions.setImage("greet", 1, null);
        expect((await store.versions.get("greet", 1))?.image).toBeNull();
      });
    });

    describe("invocations", () => {
      test("batches of the request path come back through list() like single records, filtered and newest first", async () => {
        const a = invocation("a1", { createdAt: 1_000, status: 200, durationMs: 1.5, start: "cell", error: "tab\there" });
        const b = invocation("a2", { createdAt: 2_000, status: 500, instance: null, start: null });
        const c = invocation("a3", { createdAt: 3_000, status: 200 });
        await store.invocations.appendBatches([batch(a, b)]);
        await store.invocations.appendBatches([batch(c)]);
        await store.invocations.appendBatches([]);
        await store.invocations.insert(invocation("single", { createdAt: 2_500, kind: "async", state: "succeeded" }));
        expect((await store.invocations.list("greet")).map((r) => r.id)).toEqual(["a3", "single", "a2", "a1"]);
        // Every field comes back as it went in (payload and result are not kept for batched records).
        expect((await store.invocations.list("greet")).at(-1)).toEqual(a);
        expect((await store.invocations.list("greet")).at(-2)).toEqual(b);
        expect((await store.invocations.list("greet", { status: 500 })).map((r) => r.id)).toEqual(["a2"]);
        expect((await store.invocations.list("greet", { since: 2_000 })).map((r) => r.id)).toEqual(["a3", "single", "a2"]);
        expect((await store.invocations.list("greet", { limit: 2 })).map((r) => r.id)).toEqual(["a3", "single"]);
        expect((await store.invocations.list("greet", { kind: "async" })).map((r) => r.id)).toEqual(["single"]);
        expect(await store.invocations.list("other")).toEqual([]);
      });

      test("a batch of many records, with every start, kind and state, round-trips", async () => {
        const starts = ["warm", "cell", "cold", null] as const;
        const kinds = ["sync", "async", "schedule"] as const;
        const states = ["done", "queued", "running", "succeeded", "failed", "dead"] as const;
        const records = Array.from({ length: 1000 }, (_, i) =>
          invocation(`r${i}`, {
            createdAt: 10_000 + i,
            updatedAt: 10_000 + i + (i % 3),
            start: starts[i % 4] ?? null,
            kind: kinds[i % 3] ?? "sync",
            state: states[i % 6] ?? "done",
            instance: i % 5 === 0 ? null : `i-${i % 7}`,
            status: i % 11 === 0 ? null : 200 + (i % 4),
            queueWaitMs: i % 13 === 0 ? null : i / 7,
            durationMs: i / 3,
            bytesOut: i * 1000,
            error: i % 17 === 0 ? `oops ${i}\nline two` : null,
          }),
        );
        await store.invocations.appendBatches([batch(...records)]);
        expect(await store.invocations.list("greet", { limit: 1000 })).toEqual(records.reverse());
      });

      test("list reads through many batches, newest first, up to the limit", async () => {
        // More batches than one page of a paged reader.
        for (let i = 0; i < 50; i++) await store.invocations.appendBatches([batch(invocation(`b${i}`, { createdAt: 1_000 + i, updatedAt: 1_000 + i }))]);
        const all = await store.invocations.list("greet", { limit: 1_000 });
        expect(all.map((r) => r.id)).toEqual(Array.from({ length: 50 }, (_, i) => `b${49 - i}`));
        expect((await store.invocations.list("greet", { limit: 3 })).map((r) => r.id)).toEqual(["b49", "b48", "b47"]);
        expect((await store.invocations.list("greet", { since: 1_045 })).map((r) => r.id)).toEqual(["b49", "b48", "b47", "b46", "b45"]);
        expect(await store.invocations.list("greet", { limit: 0 })).toEqual([]);
      });

      test("prune deletes old batches and old finished records, never queued or running ones", async () => {
        await store.invocations.appendBatches([batch(invocation("old-b", { createdAt: 1_000, updatedAt: 1_000 }))]);
        await store.invocations.appendBatches([batch(invocation("new-b", { createdAt: 9_000, updatedAt: 9_000 }))]);
        await store.invocations.insertMany([
          invocation("old-done", { createdAt: 1_000, updatedAt: 1_000, kind: "async", state: "succeeded" }),
          invocation("old-dead", { createdAt: 1_000, updatedAt: 2_000, kind: "async", state: "dead" }),
          invocation("old-queued", { createdAt: 1_000, updatedAt: 1_000, kind: "async", state: "queued" }),
          invocation("old-running", { createdAt: 1_000, updatedAt: 1_000, kind: "async", state: "running" }),
          invocation("long-async", { createdAt: 1_000, updatedAt: 8_000, kind: "async", state: "failed" }),
        ]);
        await store.invocations.prune(5_000);
        expect((await store.invocations.list("greet")).map((r) => r.id).sort()).toEqual(["long-async", "new-b", "old-queued", "old-running"]);
      });

      test("a single record keeps fractions of a millisecond, as measured", async () => {
        await store.invocations.insert(invocation("frac", { createdAt: 1_000, kind: "async", state: "succeeded", queueWaitMs: 0.25, durationMs: 12.75 }));
        expect(await store.invocations.get("frac")).toMatchObject({ queueWaitMs: 0.25, durationMs: 12.75 });
      });

      test("insertMany, list filters newest first with a limit, update", async () => {
        await store.invocations.insertMany([
          invocation("r1", { createdAt: 1_000, status: 200 }),
          invocation("r2", { createdAt: 2_000, status: 500 }),
          invocation("r3", { createdAt: 3_000, status: 200 }),
          invocation("r4", { createdAt: 4_000, status: 200, kind: "async", state: "queued" }),
          invocation("o1", { createdAt: 5_000, function: "other" }),
        ]);
        await store.invocations.insertMany([]);

        expect((await store.invocations.list("greet")).map((r) => r.id)).toEqual(["r4", "r3", "r2", "r1"]);
        expect((await store.invocations.list("greet", { status: 200 })).map((r) => r.id)).toEqual(["r4", "r3", "r1"]);
        expect((await store.invocations.list("greet", { status: 200, limit: 2 })).map((r) => r.id)).toEqual(["r4", "r3"]);
        expect((await store.invocations.list("greet", { kind: "async" })).map((r) => r.id)).toEqual(["r4"]);
        expect((await store.invocations.list("greet", { state: "done", since: 2_000 })).map((r) => r.id)).toEqual(["r3", "r2"]);
        expect((await store.invocations.list("other")).map((r) => r.id)).toEqual(["o1"]);
        expect(await store.invocations.get("r2")).toEqual(invocation("r2", { createdAt: 2_000, status: 500 }));

        await store.invocations.update("r4", { state: "succeeded", attempts: 2, result: '{"ok":true}', updatedAt: 9_000 });
        expect(await store.invocations.get("r4")).toMatchObject({
          state: "succeeded",
          attempts: 2,
          result: '{"ok":true}',
          updatedAt: 9_000,
          kind: "async",
          createdAt: 4_000,
        });
        const before = Date.now();
        await store.invocations.update("r3", { state: "failed", error: "boom" });
        expect((await store.invocations.get("r3"))?.updatedAt).toBeGreaterThanOrEqual(before);
        await store.invocations.insert(invocation("r5", { createdAt: 6_000, payload: '{"in":1}' }));
        expect((await store.invocations.list("greet", { limit: 1 })).map((r) => r.id)).toEqual(["r5"]);
        expect((await store.invocations.get("r5"))?.payload).toBe('{"in":1}');
        expect(await store.invocations.get("missing")).toBeUndefined();
      });

      test("insertMany keeps the batch when a client reused a request id: the first record of an id wins", async () => {
        await store.invocations.insert(invocation("dup", { status: 200 }));
        await store.invocations.insertMany([invocation("fresh"), invocation("dup", { status: 500 })]);
        expect(await store.invocations.get("fresh")).toBeDefined();
        expect((await store.invocations.get("dup"))?.status).toBe(200);
      });

      test("insertMany handles batches larger than one INSERT", async () => {
        const many = Array.from({ length: 1_234 }, (_, i) => invocation(`b${i}`, { createdAt: i }));
        await store.invocations.insertMany(many);
        expect(await store.invocations.list("greet", { limit: 5_000 })).toHaveLength(1_234);
        expect((await store.invocations.list("greet", { limit: 1 }))[0]?.id).toBe("b1233");
      });
    });

    describe("schedules", () => {
      const base = { function: "greet", cron: "0 * * * *", timezone: null, payload: null, overlap: "skip" as const };

      test("create, get, list, recordRun counters, delete", async () => {
        const s1 = await store.schedules.create({ ...base, id: "s1" });
        expect(s1).toMatchObject({ id: "s1", runs: 0, skipped: 0, lastRunAt: null, lastStatus: null });
        expect(await store.schedules.get("s1")).toEqual(s1);
        await store.schedules.create({ ...base, id: "s2", function: "other", timezone: "Europe/Paris", payload: '{"a":1}', overlap: "allow" });
        const dup = await rejection(store.schedules.create({ ...base, id: "s1" }));
        expect(dup).toBeInstanceOf(ForgeError);
        expect(dup).toMatchObject({ code: ErrorCode.Conflict, status: 409 });

        expect(await store.schedules.get("s2")).toMatchObject({ function: "other", timezone: "Europe/Paris", payload: '{"a":1}', overlap: "allow" });
        expect((await store.schedules.list()).map((s) => s.id).sort()).toEqual(["s1", "s2"]);
        expect((await store.schedules.list("greet")).map((s) => s.id)).toEqual(["s1"]);

        await store.schedules.recordRun("s1", { ranAt: 10_000, status: 200 });
        await store.schedules.recordRun("s1", { ranAt: 20_000, status: 500 });
        await store.schedules.recordRun("s1", { skipped: true });
        await store.schedules.recordRun("missing", { skipped: true });
        expect(await store.schedules.get("s1")).toMatchObject({ runs: 2, skipped: 1, lastRunAt: 20_000, lastStatus: 500 });
        await store.schedules.recordRun("s1", { ranAt: 30_000, status: null });
        expect(await store.schedules.get("s1")).toMatchObject({ runs: 3, lastRunAt: 30_000, lastStatus: null });

        expect(await store.schedules.delete("s1")).toBe(true);
        expect(await store.schedules.delete("s1")).toBe(false);
        expect(await store.schedules.get("s1")).toBeUndefined();
        await store.schedules.create({ ...base, id: "s3", function: "other" });
        expect(await store.schedules.deleteForFunction("other")).toBe(2);
        expect(await store.schedules.deleteForFunction("other")).toBe(0);
        expect(await store.schedules.list()).toEqual([]);
      });

      test("concurrent recordRun calls lose no count", async () => {
        await store.schedules.create({ ...base, id: "s1" });
        await Promise.all(Array.from({ length: 10 }, (_, i) => store.schedules.recordRun("s1", i % 2 ? { skipped: true } : { ranAt: i, status: 200 })));
        expect(await store.schedules.get("s1")).toMatchObject({ runs: 5, skipped: 5 });
      });
    });

    describe("lifecycle", () => {
      test("delete removes the function with its versions, invocations and schedules, and nothing else", async () => {
        for (const fn of ["greet", "keep"]) {
          await store.functions.ensure(fn, config(fn));
          await store.versions.create(fn, newVersion(fn, 1));
          await store.versions.activate(fn, 1);
          await store.invocations.insert(invocation(`${fn}-inv`, { function: fn }));
          await store.invocations.appendBatches([batch(invocation(`${fn}-batched`, { function: fn }))]);
          await store.schedules.create({ id: `${fn}-sched`, function: fn, cron: "* * * * *", timezone: null, payload: null, overlap: "skip" });
        }
        expect(await store.functions.delete("greet")).toBe(true);
        expect(await store.functions.delete("greet")).toBe(false);

        expect(await store.functions.get("greet")).toBeUndefined();
        expect(await store.versions.list("greet")).toEqual([]);
        expect(await store.invocations.list("greet")).toEqual([]);
        expect(await store.schedules.list("greet")).toEqual([]);

        expect((await store.functions.get("keep"))?.activeVersion).toBe(1);
        expect(await store.versions.list("keep")).toHaveLength(1);
        expect(await store.invocations.get("keep-inv")).toBeDefined();
        expect((await store.invocations.list("keep")).map((r) => r.id).sort()).toEqual(["keep-batched", "keep-inv"]);
        expect(await store.schedules.get("keep-sched")).toBeDefined();

        // A re-created function starts numbering from 1 again.
        await store.functions.ensure("greet", config("greet"));
        expect((await store.versions.create("greet", newVersion("greet", 1))).version).toBe(1);
      });

      test("a closed store rejects with a Disposed error; close is idempotent", async () => {
        await store.functions.ensure("greet", config("greet"));
        expect(await store.functions.list()).toHaveLength(1);
        await store.close();
        await store.close();
        expect(await rejection(store.functions.list())).toMatchObject({ code: ErrorCode.Disposed });
        expect(await rejection(store.versions.create("greet", newVersion("greet", 1)))).toMatchObject({ code: ErrorCode.Disposed });
        expect(await rejection(store.invocations.insertMany([invocation("x")]))).toMatchObject({ code: ErrorCode.Disposed });
        expect(await rejection(store.schedules.list())).toMatchObject({ code: ErrorCode.Disposed });
      });
    });
  });
}
