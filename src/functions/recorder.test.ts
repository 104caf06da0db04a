/**
 * The recorder over a scripted repository: a write that fails keeps its batches for the next
 * flush (in order, none lost), and what is held while the store is away is bounded.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import type { InvocationRecord, RecordBatch } from "../store/index.ts";
import { decodeRecordColumns } from "../store/record-batch.ts";
import { InvocationRecorder } from "./recorder.ts";
import { until } from "../../test/_helpers.ts";

function capture() {
  const lines: { level: string; text: string }[] = [];
  const logger = createConsola({ level: 5, reporters: [{ log: (o) => lines.push({ level: o.type, text: o.args.map(String).join(" ") }) }] });
  return { logger, lines };
}

/** A repository that refuses the first `failures` writes, then keeps what it is given. */
function flakyRepo(failures: number) {
  const written: RecordBatch[] = [];
  let calls = 0;
  return {
    written,
    get calls() {
      return calls;
    },
    async appendBatches(batches: RecordBatch[]): Promise<void> {
      calls++;
      if (calls <= failures) throw new Error("connect ECONNREFUSED 127.0.0.1:5432");
      written.push(...batches);
    },
  };
}

function record(fn: string, i: number): InvocationRecord {
  return {
    id: `req-${fn}-${i}`,
    function: fn,
    version: 1,
    instance: "i-1",
    start: "warm",
    kind: "sync",
    state: "done",
    status: 200,
    attempts: 1,
    queueWaitMs: 0,
    durationMs: 1,
    bytesIn: 0,
    bytesOut: 2,
    payload: null,
    result: null,
    error: null,
    createdAt: 1_000 + i,
    updatedAt: 1_000 + i,
  };
}

/** The ids of the records in what was written, in the order written. */
function ids(batches: RecordBatch[]): string[] {
  return batches.flatMap((b) => decodeRecordColumns(b.function, b.data).map((r) => r.id));
}

describe("invocation recorder", () => {
  test("a store that fails twice loses no record: the batches go again, in order, at the next flushes", async () => {
    const repo = flakyRepo(2);
    const { logger, lines } = capture();
    await using recorder = new InvocationRecorder({ repo, logger, flushEveryMs: 60_000, retryEveryMs: 60_000 });
    const expected: string[] = [];
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 5; i++) {
        const r = record(round % 2 === 0 ? "a" : "b", round * 10 + i);
        recorder.record(r);
        expected.push(r.id);
      }
      await recorder.flush();
    }
    expect(repo.calls).toBe(3);
    expect(ids(repo.written)).toEqual(expected);
    // One warning for the outage, however many writes failed in it.
    expect(lines.filter((l) => l.level === "warn")).toHaveLength(1);
    expect(lines.some((l) => l.level === "info" && l.text.includes("again"))).toBe(true);
    expect(recorder.dropped).toBe(0);
  });

  test("flush() during a write resolves once a later write took its records; writes never overlap", async () => {
    const gates: (() => void)[] = [];
    const written: RecordBatch[] = [];
    let inFlight = 0;
    const repo = {
      async appendBatches(batches: RecordBatch[]): Promise<void> {
        expect(++inFlight).toBe(1);
        await new Promise<void>((r) => gates.push(r));
        written.push(...batches);
        inFlight--;
      },
    };
    await using recorder = new InvocationRecorder({ repo, logger: capture().logger, flushEveryMs: 60_000 });
    recorder.record(record("a", 1));
    void recorder.flush();
    recorder.record(record("a", 2));
    let done = false;
    const second = recorder.flush().then(() => void (done = true));
    expect(gates).toHaveLength(1);
    gates.shift()?.();
    await until(() => gates.length > 0, 5000, "the second write");
    expect(ids(written)).toEqual(["req-a-1"]);
    expect(done).toBe(false);
    gates.shift()?.();
    await second;
    expect(ids(written)).toEqual(["req-a-1", "req-a-2"]);
  });

  test("while the store is away what is held is bounded: the oldest go, counted, with one warning", async () => {
    const repo = flakyRepo(Number.POSITIVE_INFINITY);
    const { logger, lines } = capture();
    const recorder = new InvocationRecorder({ repo, logger, flushEveryMs: 60_000, retryEveryMs: 60_000, maxHeldRecords: 10 });
    for (let i = 0; i < 30; i++) {
      recorder.record(record("a", i));
      if (i % 4 === 3) await recorder.flush();
    }
    await recorder.flush();
    // Batches of 4, 4, ... and 2: the newest that fit in 10 are kept.
    expect(recorder.dropped).toBe(20);
    expect(lines.filter((l) => l.level === "warn")).toHaveLength(2); // the failed write, then the first drop
    expect(lines.filter((l) => l.text.includes("dropping the oldest"))).toHaveLength(1);

    // The store is back: what was kept is written, oldest first.
    const written: RecordBatch[] = [];
    repo.appendBatches = async (b: RecordBatch[]) => void written.push(...b);
    await recorder[Symbol.asyncDispose]();
    expect(ids(written)).toEqual(Array.from({ length: 10 }, (_, i) => `req-a-${20 + i}`));
    expect(lines.some((l) => l.text.includes("20 were dropped"))).toBe(true);
  });

  test("a byte bound drops the oldest too", async () => {
    const repo = flakyRepo(Number.POSITIVE_INFINITY);
    const recorder = new InvocationRecorder({ repo, logger: capture().logger, flushEveryMs: 60_000, retryEveryMs: 60_000, maxHeldBytes: 1 });
    for (let i = 0; i < 3; i++) {
      recorder.record(record("a", i));
      await recorder.flush();
    }
    // Each batch alone is over one byte: it goes before it is even tried.
    expect(recorder.dropped).toBe(3);
    await recorder[Symbol.asyncDispose]();
  });

  test("with no new record, a failed write is tried again on its own", async () => {
    const repo = flakyRepo(1);
    await using recorder = new InvocationRecorder({ repo, logger: capture().logger, flushEveryMs: 60_000, retryEveryMs: 5 });
    recorder.record(record("a", 1));
    await recorder.flush();
    expect(repo.written).toHaveLength(0);
    await until(() => repo.written.length > 0, 5000, "the retry of the failed write");
    expect(ids(repo.written)).toEqual(["req-a-1"]);
  });
});
