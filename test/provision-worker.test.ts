/**
 * Retries and dead letters of provisioning on real Redis Streams and a real Postgres (shared
 * backend), in process: a backend that fails once succeeds on the retry; one that always
 * fails ends `failed` with its reason, in the dead-letter stream, with nothing left behind.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { SQL } from "bun";
import { createConsola } from "consola";
import { Redis } from "ioredis";
import { loadConfig } from "../src/config.ts";
import { createProvisioning, createSharedBackend, type DatabaseBackend, type ProvisionJob } from "../src/provision/index.ts";
import { tempDir, until } from "./_helpers.ts";
import { requireServices } from "./_services.ts";

const services = requireServices("redisUrl", "pgUrl");

describe.skipIf(!services)("provisioning retries and dead letters (Redis, shared backend)", () => {
  const prefixes: string[] = [];

  afterAll(async () => {
    if (!services) return;
    const redis = new Redis(services.redisUrl);
    for (const p of prefixes) {
      const keys = await redis.keys(`${p}:*`);
      if (keys.length) await redis.del(...keys);
    }
    redis.disconnect();
  });

  async function open(wrap: (real: DatabaseBackend) => DatabaseBackend) {
    if (!services) throw new Error("unreachable: skipped");
    const prefix = `forge-test-${randomBytes(5).toString("hex")}`;
    prefixes.push(prefix);
    const dir = tempDir();
    const config = loadConfig({
      FORGE_DATA_DIR: dir,
      FORGE_REDIS_URL: services.redisUrl,
      FORGE_REDIS_PREFIX: prefix,
      FORGE_PG_ADMIN_URL: services.pgUrl,
      FORGE_PROVISION_BACKEND: "shared",
      FORGE_QUEUE_VISIBILITY: "5s",
    });
    const real = createSharedBackend({ adminUrl: services.pgUrl });
    const p = await createProvisioning(config, { logger: createConsola({ level: -999 }), backends: { shared: wrap(real) }, retry: { baseDelayMs: 50, maxDelayMs: 100 } });
    const waitFor = (id: string, status: string): Promise<ProvisionJob> =>
      until(async () => {
        const j = await p.store.get(id);
        return j?.status === status ? j : undefined;
      }, 30_000, `job ${id} ${status}`);
    return Object.assign(p, {
      waitFor,
      async [Symbol.asyncDispose]() {
        await p.close();
        await real.close();
        dir[Symbol.dispose]();
      },
    });
  }

  test("a job failing once succeeds on its retry", async () => {
    let calls = 0;
    await using p = await open((real) => ({
      ...real,
      name: "shared",
      plan: (job) => real.plan(job),
      destroy: (job) => real.destroy(job),
      close: () => real.close(),
      async create(job, creds, ctx) {
        if (++calls === 1) throw new Error("connection reset by peer");
        return real.create(job, creds, ctx);
      },
    }));
    const job = await p.service.create({ service_name: "flaky" });
    const ready = await p.waitFor(job.id, "ready");
    expect(ready.attempts).toBe(2);
    expect(calls).toBe(2);
    const sql = new SQL(ready.url ?? "", { max: 1 });
    try {
      expect(await sql`select 1 as one`).toEqual([{ one: 1 }]);
    } finally {
      await sql.close();
    }
    expect(await p.queue.deadLetters()).toEqual([]);
    await p.service.delete(job.id);
    await p.waitFor(job.id, "deleted");
  }, 60_000);

  test("a job failing every time lands in dead letters with its reason, and leaves nothing behind", async () => {
    const destroyed: string[] = [];
    let calls = 0;
    await using p = await open((real) => ({
      name: "shared",
      plan: (job) => real.plan(job),
      close: () => real.close(),
      async create(job, creds, ctx) {
        calls++;
        await real.create(job, creds, ctx); // it gets half way, then breaks
        throw new Error("extension pgvector is not available");
      },
      async destroy(job) {
        destroyed.push(job.id);
        await real.destroy(job);
      },
    }));
    const job = await p.service.create({ service_name: "doomed" });
    const failed = await p.waitFor(job.id, "failed");
    expect(calls).toBe(3);
    expect(failed.detail).toBe("provisioning failed after 3 attempt(s): extension pgvector is not available");
    const dead = await until(async () => {
      const d = await p.queue.deadLetters();
      return d.length > 0 ? d : undefined;
    });
    expect(dead[0]).toMatchObject({ body: { job: job.id, op: "create" }, attempts: 3, reason: "extension pgvector is not available" });
    expect(destroyed).toContain(job.id);
    if (!services) return;
    const admin = new SQL(services.pgUrl, { max: 1 });
    try {
      expect(await admin`select 1 from pg_roles where rolname = ${`forge_${job.id}`}`).toHaveLength(0);
    } finally {
      await admin.close();
    }
    // A failed job expires like a deleted one, and can be deleted meanwhile.
    expect((await p.service.delete(job.id)).accepted).toBe(true);
    await p.waitFor(job.id, "deleted");
  }, 60_000);
});
