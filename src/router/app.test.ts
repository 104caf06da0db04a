/**
 * The router's error mapping when the metadata store fails, in process (app.request, no
 * sockets): a repository that does not answer is a 503 store_unavailable, a bug is a 500.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { ErrorCode, ForgeError } from "../errors.ts";
import { FunctionService, InvocationRecorder } from "../functions/index.ts";
import type { PoolManager } from "../pool/index.ts";
import { asyncStore, openStore, type AsyncStore, type FunctionRecord } from "../store/index.ts";
import { createRouter } from "./app.ts";

const logger = createConsola({ level: -999 });
const KEY = "test-key";

function router(patch: (store: AsyncStore) => AsyncStore) {
  const sqlite = openStore(":memory:");
  const store = patch(asyncStore(sqlite));
  // Only the store is reached by the routes asked here; a pool call would be a TypeError (a bug).
  const pool = {} as PoolManager; // deliberately empty: see above
  const functions = new FunctionService({ store, pool, logger, dataDir: "/nonexistent", urlOf: (n) => `http://${n}.localhost`, limits: { maxBytes: 1, maxFiles: 1 } });
  const recorder = new InvocationRecorder({ repo: store.invocations, logger });
  const app = createRouter({ domain: "localhost", apiKey: KEY, functions, pool, recorder, logger, maxBodyBytes: 1024, maxArchiveBytes: 1024 });
  const get = (path: string) => app.request(`http://localhost${path}`, { headers: { authorization: `Bearer ${KEY}`, host: "localhost" } });
  return { get, [Symbol.dispose]: () => sqlite.close() };
}

const refused = () => Promise.reject(new Error("connect ECONNREFUSED 10.0.0.5:5432"));

describe("router over a failing store", () => {
  test("a repository that does not answer is a 503 store_unavailable with a hint", async () => {
    using r = router((s) => ({ ...s, functions: { ...s.functions, list: refused, get: refused } }));
    for (const path of ["/v1/functions", "/v1/functions/greet", "/v1/functions/greet/versions"]) {
      const res = await r.get(path);
      expect(res.status).toBe(503);
      const body = (await res.json()) as { error: { code: string; hint: string; message: string } };
      expect(body.error.code).toBe("store_unavailable");
      expect(body.error.hint).toContain("FORGE_DB");
      expect(body.error.message).not.toContain("10.0.0.5"); // the cause is logged, not sent
    }
  });

  test("a ForgeError from the store keeps its status and code; a missing function is still a 404", async () => {
    const closed = () => Promise.reject(new ForgeError(ErrorCode.Disposed, 503, "the store is closed"));
    using r = router((s) => ({ ...s, functions: { ...s.functions, list: closed, get: async () => undefined } }));
    const list = await r.get("/v1/functions");
    expect(list.status).toBe(503);
    expect(((await list.json()) as { error: { code: string } }).error.code).toBe("disposed");
    const res = await r.get("/v1/functions/greet");
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("function_not_found");
  });

  test("a bug outside the store stays a 500", async () => {
    const fn: FunctionRecord = { name: "greet", activeVersion: 1, config: {} as FunctionRecord["config"], createdAt: 0, updatedAt: 0 };
    using r = router((s) => ({ ...s, functions: { ...s.functions, get: async () => fn } }));
    // The route calls pool.snapshot(), which this pool does not have: a TypeError in forge's own code.
    const res = await r.get("/v1/functions/greet");
    expect(res.status).toBe(500);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("internal");
  });
});

describe("answers merged from several nodes", () => {
  const fn: FunctionRecord = { name: "greet", activeVersion: 1, config: {} as FunctionRecord["config"], createdAt: 0, updatedAt: 0 };
  const here = { function: "greet", version: 1, draining: false, inFlight: 0, queued: 0, desired: 0, instances: [{ id: "i1" }], starts: { warm: 0, cell: 0, cold: 0 } };

  /** A node "a" whose one peer "b" answers every question with `answer`. */
  function clusterRouter(answer: unknown, lines: { ts: number; text: string }[] = []) {
    const functions = { get: async () => fn, invocations: async () => [] } as unknown as FunctionService;
    const pool = {
      snapshot: () => here,
      keepAliveOf: () => ({ policy: "fixed", prewarmMs: 0, keepAliveMs: 600_000, source: "fixed", prewarms: 0 }),
      memory: () => ({ budgetMb: 1024, countedMb: 0, declaredMb: 0, residentMb: 0, peakMb: 0, accounting: "measured", headroomMb: 16 }),
    } as unknown as PoolManager;
    const logs = { read: async () => lines.map((l) => ({ instance: "i1", stream: "stdout", function: "greet", version: 1, ...l })), follow: () => () => {} };
    const app = createRouter({
      domain: "localhost",
      apiKey: KEY,
      functions,
      pool,
      recorder: {} as InvocationRecorder,
      logger,
      maxBodyBytes: 1024,
      maxArchiveBytes: 1024,
      logs: logs as never,
      nodes: {
        self: "a",
        list: async () => [
          { id: "a", url: "http://a", driver: "process", version: "t", startedAt: 0, heartbeatAt: 0 },
          { id: "b", url: "http://b", driver: "process", version: "t", startedAt: 0, heartbeatAt: 0 },
        ],
        peers: {
          ask: async <T,>() => [{ node: "b", value: answer as T }],
          follow: async () => [{ node: "b", value: true as const }],
        },
      },
    });
    return (path: string) => app.request(`http://localhost${path}`, { headers: { authorization: `Bearer ${KEY}`, host: "localhost" } });
  }

  test("a peer answering with something else than forge's shape (another version, not forge) is left out, not a 500", async () => {
    for (const answer of [[1, 2], { lines: "x", pool: { instances: 5 } }, { lines: [null, 7, { ts: "soon", text: 1 }], pool: "full" }, null, "text"]) {
      const get = clusterRouter(answer, [{ ts: 5, text: "mine" }]);
      const info = await get("/v1/functions/greet");
      expect(info.status).toBe(200);
      const body = (await info.json()) as { pool: { instances: { id: string; node: string }[] } };
      expect(body.pool.instances).toEqual([{ id: "i1", node: "a" } as never]);
      const logs = await get("/v1/functions/greet/logs");
      expect(logs.status).toBe(200);
      expect(((await logs.json()) as { lines: { text: string }[] }).lines.map((l) => l.text)).toEqual(["mine"]);
    }
  });

  test("a follow with nothing to send yet gets its answer's head at once (a peer waits 2 s for it)", async () => {
    const get = clusterRouter({ lines: [] });
    const server = Bun.serve({ port: 0, fetch: (req) => get(new URL(req.url).pathname + new URL(req.url).search) });
    try {
      const client = new AbortController();
      const res = await fetch(`http://127.0.0.1:${server.port}/v1/functions/greet/logs?follow=1&history=0`, { signal: AbortSignal.any([client.signal, AbortSignal.timeout(1500)]) });
      expect(res.status).toBe(200);
      client.abort();
    } finally {
      await server.stop(true);
    }
  });
});
