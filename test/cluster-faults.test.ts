/**
 * A cluster's Postgres going away under load (issue 15): a server of the test's own, stopped
 * for five seconds while two nodes serve a warm load. Nothing on the request path waits on
 * it; control calls answer 503 with a hint; after it, deploys work and no record was lost.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SQL } from "bun";
import { Redis } from "ioredis";
import { freePort } from "../src/bench/_docker-bench.ts";
import { cli, startForge, tempDir, until } from "./_helpers.ts";
import { testCluster } from "./_cluster.ts";
import { startPrivatePostgres } from "./_postgres.ts";
import { requireServices } from "./_services.ts";

const services = requireServices("redisUrl", "pgUrl");
const SOURCE = `export default { fetch: () => Response.json({ v: process.env.V ?? "1" }) };`;

describe.skipIf(!services)("a cluster when Postgres goes away", () => {
  test("five seconds without Postgres under a warm load: no failed request, a deploy gets a 503 with a hint; after it deploys work and every record is there", async () => {
    await using pg = await startPrivatePostgres();
    using fns = tempDir("forge-faults-fns-");
    // The nodes' Postgres is the private one (the cluster's own database goes unused).
    await using cluster = await testCluster(services as { pgUrl: string; redisUrl: string }, "pgdown");
    const env = cluster.env({ FORGE_DB: pg.url, FORGE_RECONCILE: "1s" });
    await using a = await startForge({ env });
    await using b = await startForge({ env });
    const folder = (v: string): string => {
      const dir = join(fns, `v${v}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, "index.ts"), SOURCE);
      writeFileSync(join(dir, "forge.json"), JSON.stringify({ name: "steady", env: { V: v } }));
      return dir;
    };
    expect((await cli(a, ["deploy", folder("1")])).code).toBe(0);
    await until(async () => (await b.fn("steady", "/")).status === 200, 10_000, "steady on B");

    let ok = 0;
    const failures: string[] = [];
    let done = false;
    const loop = async (node: typeof a): Promise<void> => {
      while (!done) {
        try {
          const res = await node.fn("steady", "/");
          if (res.status === 200) ok++;
          else failures.push(`${res.status} ${await res.text()}`);
          await res.body?.cancel().catch(() => {});
        } catch (err) {
          failures.push(`error ${err instanceof Error ? err.message : String(err)}`);
        }
      }
    };
    const loops = [a, b, a, b].map(loop);
    let duringOutage: Awaited<ReturnType<typeof cli>> | undefined;
    try {
      await until(() => ok > 100, 10_000, "a warm load");
      await pg.stop();
      const downAt = Date.now();
      const before = ok;
      duringOutage = await cli(a, ["deploy", folder("2")]);
      // The outage lasts five seconds whatever the deploy did, and the load goes on through it.
      await until(() => Date.now() - downAt >= 5000 && ok > before + 100, 20_000, "five seconds of load without Postgres");
      await pg.start();
      const after = ok;
      await until(() => ok > after + 100, 10_000, "load after Postgres is back");
    } finally {
      done = true;
      await Promise.all(loops);
    }
    expect(failures).toEqual([]);
    expect(duringOutage?.code).toBe(1);
    expect(duringOutage?.stderr + (duringOutage?.stdout ?? "")).toContain("the metadata database did not answer");
    expect(duringOutage?.stderr + (duringOutage?.stdout ?? "")).toContain("check FORGE_DB");

    // Back: a deploy works and reaches both nodes; the records held through the outage were written.
    const redeploy = await cli(a, ["deploy", folder("2")]);
    expect(redeploy.code).toBe(0);
    await until(async () => {
      const [va, vb] = await Promise.all([a.fn("steady", "/"), b.fn("steady", "/")]);
      return va.status === 200 && vb.status === 200 && ((await va.json()) as { v: string }).v === "2" && ((await vb.json()) as { v: string }).v === "2";
    }, 10_000, "v2 on both nodes");
    // Every request of the load has its record (counted in the database: info's stats read at most 10k).
    const served = ok;
    const db = new SQL(pg.url);
    let recorded = 0;
    try {
      await until(async () => {
        const rows = (await db`select coalesce(sum(count), 0)::int as n from invocation_batches where function = 'steady'`) as { n: number }[];
        recorded = rows[0]?.n ?? 0;
        return recorded >= served;
      }, 15_000, `a record of each of the ${served} requests`).catch((err: unknown) => {
        throw new Error(`${String(err)}: ${recorded} recorded`);
      });
    } finally {
      await db.close();
    }
  }, 120_000);
});

describe.skipIf(!services)("a cluster when Redis goes away", () => {
  test("without Redis warm traffic goes on, an async invoke is a 503 with a hint and a deploy still lands everywhere (the reconcile carries it); with Redis back, notifications flow again", async () => {
    await using redis = await startPrivateRedis();
    using fns = tempDir("forge-faults-redis-fns-");
    await using cluster = await testCluster(services as { pgUrl: string; redisUrl: string }, "faults");
    {
      const env = cluster.env({ FORGE_REDIS_URL: redis.url, FORGE_RECONCILE: "1s" });
      await using a = await startForge({ env });
      await using b = await startForge({ env });
      const folder = (name: string, v: string): string => {
        const dir = join(fns, `${name}-v${v}`);
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, "index.ts"), SOURCE);
        writeFileSync(join(dir, "forge.json"), JSON.stringify({ name, env: { V: v } }));
        return dir;
      };
      const v = async (node: typeof a, name: string): Promise<string | undefined> => {
        const res = await node.fn(name, "/");
        return res.status === 200 ? ((await res.json()) as { v: string }).v : undefined;
      };
      expect((await cli(a, ["deploy", folder("warm", "1")])).code).toBe(0);
      await until(async () => (await v(b, "warm")) === "1", 10_000, "warm on B");

      await redis.stop();
      for (let i = 0; i < 50; i++) for (const n of [a, b]) expect(await v(n, "warm")).toBe("1");
      const queued = await a.api("/v1/functions/warm/invoke?async=1", { method: "POST", body: "{}", headers: { "content-type": "application/json" } });
      expect(queued.status).toBe(503);
      expect(((await queued.json()) as { error: { hint: string } }).error.hint).toMatch(/redis|FORGE_REDIS_URL/i);
      // No notification can travel: B learns of the deploy from its periodic reconcile.
      expect((await cli(a, ["deploy", folder("during", "1")])).code).toBe(0);
      await until(async () => (await v(b, "during")) === "1", 15_000, "the function deployed during the outage on B");

      await redis.start();
      // Notifications again: with the reconcile an hour away on a new node, a deploy reaches it at once.
      await using c = await startForge({ env: { ...env, FORGE_RECONCILE: "1h" } });
      expect((await cli(a, ["deploy", folder("after", "1")])).code).toBe(0);
      await until(async () => (await v(c, "after")) === "1", 10_000, "a deploy after the outage on C");
    }
  }, 120_000);
});

/** A Redis server of the test's own, to stop and start (same port, nothing persisted). */
async function startPrivateRedis(): Promise<{ url: string; stop(): Promise<void>; start(): Promise<void> } & AsyncDisposable> {
  const port = freePort();
  let proc: ReturnType<typeof Bun.spawn> | undefined;
  const url = `redis://127.0.0.1:${port}`;
  const start = async (): Promise<void> => {
    proc = Bun.spawn(["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdout: "ignore", stderr: "ignore" });
    await until(async () => {
      const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
      r.on("error", () => {});
      try {
        await r.connect();
        return (await r.ping()) === "PONG";
      } catch {
        return false;
      } finally {
        r.disconnect();
      }
    }, 10_000, "redis-server answering");
  };
  const stop = async (): Promise<void> => {
    proc?.kill("SIGKILL");
    await proc?.exited;
  };
  await start();
  return { url, start, stop, [Symbol.asyncDispose]: stop };
}
