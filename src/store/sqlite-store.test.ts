import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Database } from "bun:sqlite";
import { ErrorCode, ForgeError } from "../errors.ts";
import { openStore, RecordColumns } from "./index.ts";
import { config, invocation, newVersion } from "./store.case.ts";
import type { InvocationRecord } from "./index.ts";

let dir: string;
let dbPath: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "forge-store-"));
  // A nested path proves openStore creates the parent folders.
  dbPath = join(dir, "data", "forge.db");
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});


describe("functions", () => {
  test("ensure creates once, then returns the existing record", () => {
    using store = openStore(dbPath);
    const a = store.functions.ensure("greet", config("greet", { memoryMb: 64 }));
    expect(a).toMatchObject({ name: "greet", activeVersion: null, config: { memoryMb: 64 } });
    const b = store.functions.ensure("greet", config("greet", { memoryMb: 256 }));
    expect(b.config.memoryMb).toBe(64);
    expect(b.createdAt).toBe(a.createdAt);
    expect(store.functions.list().map((f) => f.name)).toEqual(["greet"]);
    expect(store.functions.get("nope")).toBeUndefined();
  });

  test("updateConfig changes the config; unknown function is a 404", () => {
    using store = openStore(dbPath);
    store.functions.ensure("greet", config("greet"));
    const updated = store.functions.updateConfig("greet", config("greet", { env: { A: "1" }, minWarm: 2 }));
    expect(updated.config).toEqual(config("greet", { env: { A: "1" }, minWarm: 2 }));
    expect(store.functions.get("greet")?.config.minWarm).toBe(2);
    expect(() => store.functions.updateConfig("nope", config("nope"))).toThrow(ForgeError);
  });
});

describe("versions", () => {
  test("are numbered 1, 2, 3 per function, independently", () => {
    using store = openStore(dbPath);
    store.functions.ensure("a", config("a"));
    store.functions.ensure("b", config("b"));
    expect(store.versions.create("a", newVersion("a", 1)).version).toBe(1);
    expect(store.versions.create("a", newVersion("a", 2)).version).toBe(2);
    expect(store.versions.create("b", newVersion("b", 1)).version).toBe(1);
    const a3 = store.versions.create("a", newVersion("a", 3));
    expect(a3).toMatchObject({ function: "a", version: 3, digest: "sha256-a-3", active: false, image: null });
    expect(store.versions.list("a").map((v) => v.version)).toEqual([3, 2, 1]);
    expect(store.versions.list("b").map((v) => v.version)).toEqual([1]);
    expect(store.versions.get("a", 2)?.artifact).toBe("bundles/a/2.js");
  });

  test("numbers are never reused after a discard of the newest", () => {
    using store = openStore(dbPath);
    store.functions.ensure("a", config("a"));
    store.versions.create("a", newVersion("a", 1));
    store.versions.create("a", newVersion("a", 2));
    store.versions.activate("a", 2);
    store.versions.create("a", newVersion("a", 3));
    store.versions.discard("a", 3);
    expect(store.versions.get("a", 3)).toBeUndefined();
    expect(store.versions.create("a", newVersion("a", 4)).version).toBe(4);
  });

  test("create for an unknown function is a 404", () => {
    using store = openStore(dbPath);
    try {
      store.versions.create("ghost", newVersion("ghost", 1));
      throw new Error("expected a ForgeError");
    } catch (err) {
      expect(err).toBeInstanceOf(ForgeError);
      expect((err as ForgeError).code).toBe(ErrorCode.FunctionNotFound);
      expect((err as ForgeError).status).toBe(404);
    }
  });

  test("activate flips the flags, the function's activeVersion and its config", () => {
    using store = openStore(dbPath);
    store.functions.ensure("greet", config("greet"));
    store.versions.create("greet", newVersion("greet", 1, { memoryMb: 64 }));
    store.versions.create("greet", newVersion("greet", 2, { memoryMb: 256, env: { V: "2" } }));

    const v1 = store.versions.activate("greet", 1);
    expect(v1.active).toBe(true);
    expect(store.functions.get("greet")).toMatchObject({ activeVersion: 1, config: { memoryMb: 64 } });

    store.versions.activate("greet", 2);
    expect(store.versions.list("greet").map((v) => [v.version, v.active])).toEqual([
      [2, true],
      [1, false],
    ]);
    const fn = store.functions.get("greet");
    expect(fn?.activeVersion).toBe(2);
    expect(fn?.config).toEqual(config("greet", { memoryMb: 256, env: { V: "2" } }));

    // Rollback: back to 1, only 1 active.
    store.versions.activate("greet", 1);
    expect(store.versions.list("greet").filter((v) => v.active).map((v) => v.version)).toEqual([1]);
    expect(store.functions.get("greet")?.config.memoryMb).toBe(64);
  });

  test("activate of an unknown version throws VersionNotFound 404 with a hint and changes nothing", () => {
    using store = openStore(dbPath);
    store.functions.ensure("greet", config("greet"));
    store.versions.create("greet", newVersion("greet", 1));
    store.versions.activate("greet", 1);
    let caught: unknown;
    try {
      store.versions.activate("greet", 7);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(ForgeError);
    const err = caught as ForgeError;
    expect(err.code).toBe(ErrorCode.VersionNotFound);
    expect(err.status).toBe(404);
    expect(err.hint).toContain("1");
    expect(store.functions.get("greet")?.activeVersion).toBe(1);
    expect(store.versions.get("greet", 1)?.active).toBe(true);
  });

  test("discard refuses the active version", () => {
    using store = openStore(dbPath);
    store.functions.ensure("greet", config("greet"));
    store.versions.create("greet", newVersion("greet", 1));
    store.versions.activate("greet", 1);
    expect(() => store.versions.discard("greet", 1)).toThrow(ForgeError);
    expect(store.versions.get("greet", 1)).toBeDefined();
    store.versions.discard("greet", 99); // unknown: nothing to do
  });
});

describe("invocations", () => {
  test("batches of the request path come back through list() like single records, filtered and newest first", () => {
    using store = openStore(dbPath);
    const a = invocation("a1", { createdAt: 1_000, status: 200, durationMs: 1.5, start: "cell", error: "tab\there" });
    const b = invocation("a2", { createdAt: 2_000, status: 500, instance: null, start: null });
    const c = invocation("a3", { createdAt: 3_000, status: 200 });
    const batch = (...records: InvocationRecord[]) => {
      const columns = new RecordColumns();
      for (const r of records) columns.add(r);
      return { function: "greet", firstAt: columns.firstAt, lastAt: columns.lastAt, count: columns.count, data: columns.encode() };
    };
    store.invocations.appendBatches([batch(a, b)]);
    store.invocations.appendBatches([batch(c)]);
    store.invocations.insert(invocation("single", { createdAt: 2_500, kind: "async", state: "succeeded" }));
    expect(store.invocations.list("greet").map((r) => r.id)).toEqual(["a3", "single", "a2", "a1"]);
    // Every field comes back as it went in (payload and result are not kept for batched records).
    expect(store.invocations.list("greet").at(-1)).toEqual(a);
    expect(store.invocations.list("greet").at(-2)).toEqual(b);
    expect(store.invocations.list("greet", { status: 500 }).map((r) => r.id)).toEqual(["a2"]);
    expect(store.invocations.list("greet", { since: 2_000 }).map((r) => r.id)).toEqual(["a3", "single", "a2"]);
    expect(store.invocations.list("greet", { limit: 2 }).map((r) => r.id)).toEqual(["a3", "single"]);
    expect(store.invocations.list("other")).toEqual([]);
  });

  // The round trip of a large batch is the contract suite's (store.case.ts), run on SQLite by store-sqlite.test.ts.

  test("batches written as tab-separated lines by earlier versions are still read", () => {
    {
      using store = openStore(dbPath);
      store.functions.ensure("greet", config("greet"));
    }
    const db = new Database(dbPath);
    db.run("INSERT INTO invocation_batches (function, first_at, last_at, count, lines) VALUES ('greet', 500, 600, 2, ?)", [
      "old1\t1\ti-1\twarm\tsync\tdone\t200\t1\t0\t3000\t10\t20\t500\t\t\nold2\t1\t\t\tsync\tdone\t429\t1\t\t1500\t0\t0\t600\t\tsaturated",
    ]);
    db.close();
    using store = openStore(dbPath);
    expect(store.invocations.list("greet")).toEqual([
      invocation("old2", { instance: null, start: null, status: 429, queueWaitMs: null, durationMs: 1.5, bytesIn: 0, bytesOut: 0, error: "saturated", createdAt: 600, updatedAt: 600 }),
      invocation("old1", { createdAt: 500, updatedAt: 500 }),
    ]);
  });

  test("prune deletes old batches and old finished records, never queued or running ones", () => {
    using store = openStore(dbPath);
    const columns = (...records: InvocationRecord[]) => {
      const c = new RecordColumns();
      for (const r of records) c.add(r);
      return { function: "greet", firstAt: c.firstAt, lastAt: c.lastAt, count: c.count, data: c.encode() };
    };
    store.invocations.appendBatches([columns(invocation("old-b", { createdAt: 1_000, updatedAt: 1_000 }))]);
    store.invocations.appendBatches([columns(invocation("new-b", { createdAt: 9_000, updatedAt: 9_000 }))]);
    store.invocations.insertMany([
      invocation("old-done", { createdAt: 1_000, updatedAt: 1_000, kind: "async", state: "succeeded" }),
      invocation("old-dead", { createdAt: 1_000, updatedAt: 2_000, kind: "async", state: "dead" }),
      invocation("old-queued", { createdAt: 1_000, updatedAt: 1_000, kind: "async", state: "queued" }),
      invocation("old-running", { createdAt: 1_000, updatedAt: 1_000, kind: "async", state: "running" }),
      invocation("long-async", { createdAt: 1_000, updatedAt: 8_000, kind: "async", state: "failed" }),
    ]);
    store.invocations.prune(5_000);
    expect(store.invocations.list("greet").map((r) => r.id).sort()).toEqual(["long-async", "new-b", "old-queued", "old-running"]);
  });

  test("insertMany, list filters newest first with a limit, update", () => {
    using store = openStore(dbPath);
    store.invocations.insertMany([
      invocation("r1", { createdAt: 1_000, status: 200 }),
      invocation("r2", { createdAt: 2_000, status: 500 }),
      invocation("r3", { createdAt: 3_000, status: 200 }),
      invocation("r4", { createdAt: 4_000, status: 200, kind: "async", state: "queued" }),
      invocation("o1", { createdAt: 5_000, function: "other" }),
    ]);
    store.invocations.insertMany([]);

    expect(store.invocations.list("greet").map((r) => r.id)).toEqual(["r4", "r3", "r2", "r1"]);
    expect(store.invocations.list("greet", { status: 200 }).map((r) => r.id)).toEqual(["r4", "r3", "r1"]);
    expect(store.invocations.list("greet", { status: 200, limit: 2 }).map((r) => r.id)).toEqual(["r4", "r3"]);
    expect(store.invocations.list("greet", { kind: "async" }).map((r) => r.id)).toEqual(["r4"]);
    expect(store.invocations.list("greet", { state: "done", since: 2_000 }).map((r) => r.id)).toEqual(["r3", "r2"]);
    expect(store.invocations.list("other").map((r) => r.id)).toEqual(["o1"]);
    expect(store.invocations.get("r2")).toEqual(invocation("r2", { createdAt: 2_000, status: 500 }));

    store.invocations.update("r4", { state: "succeeded", attempts: 2, result: '{"ok":true}', updatedAt: 9_000 });
    expect(store.invocations.get("r4")).toMatchObject({
      state: "succeeded",
      attempts: 2,
      result: '{"ok":true}',
      updatedAt: 9_000,
      kind: "async",
      createdAt: 4_000,
    });
    store.invocations.insert(invocation("r5", { createdAt: 6_000 }));
    expect(store.invocations.list("greet", { limit: 1 }).map((r) => r.id)).toEqual(["r5"]);
    expect(store.invocations.get("missing")).toBeUndefined();
  });

  test("insertMany keeps the batch when a client reused a request id: the first record of an id wins", () => {
    using store = openStore(dbPath);
    store.invocations.insert(invocation("dup", { status: 200 }));
    store.invocations.insertMany([invocation("fresh"), invocation("dup", { status: 500 })]);
    expect(store.invocations.get("fresh")).toBeDefined();
    expect(store.invocations.get("dup")?.status).toBe(200);
  });

  test("insertMany handles batches larger than one INSERT", () => {
    using store = openStore(dbPath);
    const batch = Array.from({ length: 1_234 }, (_, i) => invocation(`b${i}`, { createdAt: i }));
    store.invocations.insertMany(batch);
    expect(store.invocations.list("greet", { limit: 5_000 })).toHaveLength(1_234);
    expect(store.invocations.list("greet", { limit: 1 })[0]?.id).toBe("b1233");
  });
});

describe("schedules", () => {
  const base = { function: "greet", cron: "0 * * * *", timezone: null, payload: null, overlap: "skip" as const };

  test("create, get, list, recordRun counters, delete", () => {
    using store = openStore(dbPath);
    const s1 = store.schedules.create({ ...base, id: "s1" });
    expect(s1).toMatchObject({ id: "s1", runs: 0, skipped: 0, lastRunAt: null, lastStatus: null });
    store.schedules.create({ ...base, id: "s2", function: "other", timezone: "Europe/Paris", payload: '{"a":1}', overlap: "allow" });
    expect(() => store.schedules.create({ ...base, id: "s1" })).toThrow(ForgeError);

    expect(store.schedules.get("s2")).toMatchObject({ function: "other", timezone: "Europe/Paris", payload: '{"a":1}', overlap: "allow" });
    expect(store.schedules.list().map((s) => s.id).sort()).toEqual(["s1", "s2"]);
    expect(store.schedules.list("greet").map((s) => s.id)).toEqual(["s1"]);

    store.schedules.recordRun("s1", { ranAt: 10_000, status: 200 });
    store.schedules.recordRun("s1", { ranAt: 20_000, status: 500 });
    store.schedules.recordRun("s1", { skipped: true });
    store.schedules.recordRun("missing", { skipped: true });
    expect(store.schedules.get("s1")).toMatchObject({ runs: 2, skipped: 1, lastRunAt: 20_000, lastStatus: 500 });
    store.schedules.recordRun("s1", { ranAt: 30_000, status: null });
    expect(store.schedules.get("s1")).toMatchObject({ runs: 3, lastRunAt: 30_000, lastStatus: null });

    expect(store.schedules.delete("s1")).toBe(true);
    expect(store.schedules.delete("s1")).toBe(false);
    expect(store.schedules.get("s1")).toBeUndefined();
    store.schedules.create({ ...base, id: "s3", function: "other" });
    expect(store.schedules.deleteForFunction("other")).toBe(2);
    expect(store.schedules.list()).toEqual([]);
  });
});

describe("lifecycle", () => {
  test("delete removes the function with its versions, invocations and schedules, and nothing else", () => {
    using store = openStore(dbPath);
    for (const name of ["greet", "keep"]) {
      store.functions.ensure(name, config(name));
      store.versions.create(name, newVersion(name, 1));
      store.versions.activate(name, 1);
      store.invocations.insert(invocation(`${name}-inv`, { function: name }));
      store.schedules.create({ id: `${name}-sched`, function: name, cron: "* * * * *", timezone: null, payload: null, overlap: "skip" });
    }
    expect(store.functions.delete("greet")).toBe(true);
    expect(store.functions.delete("greet")).toBe(false);

    expect(store.functions.get("greet")).toBeUndefined();
    expect(store.versions.list("greet")).toEqual([]);
    expect(store.invocations.list("greet")).toEqual([]);
    expect(store.schedules.list("greet")).toEqual([]);

    expect(store.functions.get("keep")?.activeVersion).toBe(1);
    expect(store.versions.list("keep")).toHaveLength(1);
    expect(store.invocations.get("keep-inv")).toBeDefined();
    expect(store.schedules.get("keep-sched")).toBeDefined();

    // A re-created function starts numbering from 1 again.
    store.functions.ensure("greet", config("greet"));
    expect(store.versions.create("greet", newVersion("greet", 1)).version).toBe(1);
  });

  test("two stores on one file hand out distinct version numbers", () => {
    using first = openStore(dbPath);
    using second = openStore(dbPath);
    first.functions.ensure("greet", config("greet"));
    const numbers = [first, second, second, first].map((s, i) => s.versions.create("greet", newVersion("greet", i)).version);
    expect(numbers).toEqual([1, 2, 3, 4]);
    expect(second.versions.list("greet")).toHaveLength(4);
  });

  test("the schema itself cascades versions when a function row goes", () => {
    {
      using store = openStore(dbPath);
      store.functions.ensure("greet", config("greet"));
      store.versions.create("greet", newVersion("greet", 1));
    }
    const raw = new Database(dbPath);
    try {
      raw.run("PRAGMA foreign_keys = ON");
      raw.run("DELETE FROM functions WHERE name = 'greet'");
      expect(raw.query("SELECT count(*) AS n FROM versions").get()).toEqual({ n: 0 });
    } finally {
      raw.close();
    }
  });

  test("everything survives a restart (close and reopen the same file)", () => {
    {
      using store = openStore(dbPath);
      store.functions.ensure("greet", config("greet"));
      store.versions.create("greet", newVersion("greet", 1));
      store.versions.create("greet", { ...newVersion("greet", 2, { env: { K: "v" } }), image: "forge/fn-greet:v2" });
      store.versions.activate("greet", 2);
      store.invocations.insert(invocation("r1"));
      store.schedules.create({ id: "s1", function: "greet", cron: "*/5 * * * *", timezone: null, payload: null, overlap: "skip" });
      store.schedules.recordRun("s1", { ranAt: 42, status: 204 });
    }
    using store = openStore(dbPath);
    expect(store.functions.get("greet")).toMatchObject({ activeVersion: 2, config: { env: { K: "v" } } });
    expect(store.versions.list("greet").map((v) => [v.version, v.active, v.image])).toEqual([
      [2, true, "forge/fn-greet:v2"],
      [1, false, null],
    ]);
    expect(store.invocations.get("r1")).toEqual(invocation("r1"));
    expect(store.schedules.get("s1")).toMatchObject({ runs: 1, lastRunAt: 42, lastStatus: 204 });
    // Migrations are not re-applied on reopen, and numbering continues.
    expect(store.versions.create("greet", newVersion("greet", 3)).version).toBe(3);
  });

  test("a closed store throws a Disposed error; close is idempotent; :memory: works", () => {
    const store = openStore(":memory:");
    store.functions.ensure("greet", config("greet"));
    expect(store.functions.list()).toHaveLength(1);
    store.close();
    store.close();
    expect(() => store.functions.list()).toThrow(expect.objectContaining({ code: ErrorCode.Disposed }));
  });
});
