/**
 * The async invoker over the in-process queue and a real in-memory store, with a scripted
 * invoke in place of the pool: retry decisions, records, result capping, per-function
 * concurrency, and recovery of what a crash left in the store.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { ErrorCode, ForgeError } from "../errors.ts";
import { createMemoryQueue } from "../provision/index.ts";
import { asyncStore, openStore, type Store } from "../store/index.ts";
import { until } from "../../test/_helpers.ts";
import { AsyncInvoker, type AsyncJob } from "./async-invoker.ts";
import type { InvokeFn } from "./scheduler.ts";

const logger = createConsola({ level: -999 });

function setup(invoke: InvokeFn, options: { concurrency?: number; recover?: boolean; store?: Store; cap?: number } = {}) {
  const store = options.store ?? openStore(":memory:");
  const invoker = new AsyncInvoker({
    invocations: asyncStore(store).invocations,
    invoke,
    logger,
    functions: () => ["f", "g"],
    queueFor: (fn) => createMemoryQueue<AsyncJob>({ name: `async:${fn}`, retry: { maxAttempts: 3, baseDelayMs: 5, maxDelayMs: 20 } }),
    maxAttempts: 3,
    concurrency: options.concurrency ?? 4,
    syncEveryMs: 0,
    recoverFromStore: options.recover ?? false,
    ...(options.cap !== undefined ? { resultCapBytes: options.cap } : {}),
  });
  return {
    store,
    invoker,
    finished: (id: string) => until(async () => {
      const v = await invoker.get(id);
      return v.status === "succeeded" || v.status === "dead" ? v : undefined;
    }, 10_000, `${id} to finish`),
    async [Symbol.asyncDispose]() {
      await invoker.close();
      store.close();
    },
  };
}

const req = (body = '{"a":1}') => ({ body: new TextEncoder().encode(body), contentType: "application/json", path: "/?q=1" });

describe("async invoker", () => {
  test("retries 5xx, 429 and timeouts; succeeds on the third attempt with the request passed unchanged", async () => {
    const seen: { attempt: string | null; body: string; url: string; type: string | null }[] = [];
    const answers = [() => new Response("busy", { status: 429 }), () => { throw new ForgeError(ErrorCode.FunctionTimeout, 504, "slow"); }, () => new Response("yes", { status: 200, headers: { "x-k": "v" } })];
    await using h = setup(async (name, r, kind) => {
      expect([name, kind]).toEqual(["f", "async"]);
      seen.push({ attempt: r.headers.get("x-forge-attempt"), body: await r.text(), url: r.url, type: r.headers.get("content-type") });
      const next = answers[seen.length - 1];
      if (!next) throw new Error("too many attempts");
      return next();
    });
    await h.invoker.start();
    const { id, status } = await h.invoker.submit("f", req());
    expect(status).toBe("queued");
    const v = await h.finished(id);
    expect(v).toMatchObject({ status: "succeeded", attempts: 3, error: null, result: { status: 200, body: "yes", encoding: "utf8", truncated: false } });
    expect(v.result?.headers["x-k"]).toBe("v");
    expect(seen.map((s) => s.attempt)).toEqual(["1", "2", "3"]);
    expect(seen.every((s) => s.body === '{"a":1}' && s.url === "http://forge/?q=1" && s.type === "application/json")).toBe(true);
  });

  test("after the last attempt it is dead and in the dead letters; a 4xx or an unknown function is dead at once", async () => {
    await using h = setup(async (name) => {
      if (name === "g") throw new ForgeError(ErrorCode.FunctionNotFound, 404, "function g not found");
      return new Response("no", { status: 500 });
    });
    await h.invoker.start();
    const a = await h.invoker.submit("f", req("first"));
    const b = await h.invoker.submit("g", req("second"));
    expect(await h.finished(a.id)).toMatchObject({ status: "dead", attempts: 3, result: { status: 500 } });
    const gone = await h.finished(b.id);
    expect(gone).toMatchObject({ status: "dead", attempts: 1, result: null });
    expect(gone.error).toContain("not found");
    expect((await h.invoker.deadLetters("f")).map((d) => [d.id, d.attempts, d.payload, d.encoding])).toEqual([[a.id, 3, "first", "utf8"]]);
  });

  test("a long or binary result is capped and kept as valid text or base64", async () => {
    const big = "é".repeat(100); // 200 bytes of 2-byte characters
    await using h = setup(async (_n, r) => (new URL(r.url).search === "?bin" ? new Response(new Uint8Array([0xff, 0xfe, 0x00])) : new Response(big)), { cap: 51 });
    await h.invoker.start();
    const text = await h.finished((await h.invoker.submit("f", req())).id);
    expect(text.result).toMatchObject({ truncated: true, encoding: "utf8", body: "é".repeat(25) });
    const bin = await h.finished((await h.invoker.submit("f", { ...req(), path: "/?bin" })).id);
    expect(bin.result).toMatchObject({ truncated: false, encoding: "base64", body: Buffer.from([0xff, 0xfe, 0x00]).toString("base64") });
  });

  test("concurrency is bounded per function, and one function's backlog does not hold up another's", async () => {
    let inFlight = 0;
    let peak = 0;
    const gates: (() => void)[] = [];
    await using h = setup(async (name) => {
      if (name === "g") return new Response("quick");
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise<void>((r) => gates.push(r));
      inFlight--;
      return new Response("ok");
    }, { concurrency: 2 });
    await h.invoker.start();
    const ids = await Promise.all([1, 2, 3, 4, 5].map(() => h.invoker.submit("f", req())));
    await until(() => gates.length === 2, 5000, "two running");
    const other = await h.invoker.submit("g", req());
    expect((await h.finished(other.id)).status).toBe("succeeded");
    const allSucceeded = async (): Promise<boolean> => (await Promise.all(ids.map((i) => h.invoker.get(i.id)))).every((v) => v.status === "succeeded");
    while (!(await allSucceeded())) {
      gates.shift()?.();
      await until(async () => gates.length > 0 || (await allSucceeded()), 5000, "next one");
    }
    expect(peak).toBe(2);
  });

  test("memory mode: what a crash left queued or running in the store is run again at start", async () => {
    const store = openStore(":memory:");
    // A first invoker whose process "dies": its invoke never answers, its queue is dropped.
    const stuck = setup(() => new Promise<Response>(() => {}), { store, concurrency: 1 });
    await stuck.invoker.start();
    const running = await stuck.invoker.submit("f", req("was running"));
    await until(async () => (await stuck.invoker.get(running.id)).status === "running", 5000, "running");
    const queued = await stuck.invoker.submit("f", req("was queued"));

    const bodies: string[] = [];
    await using h = setup(async (_n, r) => {
      bodies.push(await r.text());
      return new Response("ok");
    }, { store, recover: true });
    await h.invoker.start();
    expect(await h.finished(running.id)).toMatchObject({ status: "succeeded", attempts: 2 });
    expect(await h.finished(queued.id)).toMatchObject({ status: "succeeded" });
    expect(bodies.sort()).toEqual(["was queued", "was running"]);
  });
});
