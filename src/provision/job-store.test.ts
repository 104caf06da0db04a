/** The shared job store suite on the memory store (plain and file-backed) and the Redis store (real Redis). */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect, test } from "bun:test";
import { Redis } from "ioredis";
import { requireServices } from "../../test/_services.ts";
import { newJobId } from "./job.ts";
import { jobStoreCase } from "./job-store.case.ts";
import { createMemoryJobStore } from "./job-store.ts";
import { createRedisJobStore } from "./redis-job-store.ts";

jobStoreCase("memory", async (ttlMs) => createMemoryJobStore({ ttlMs }));

jobStoreCase("memory, saved to a file", async (ttlMs) => {
  const dir = mkdtempSync(join(tmpdir(), "forge-jobs-"));
  const store = createMemoryJobStore({ ttlMs, file: join(dir, "jobs.json") });
  return Object.assign(store, {
    async [Symbol.asyncDispose]() {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  });
});

const services = requireServices("redisUrl");
jobStoreCase(
  "redis",
  services
    ? async (ttlMs) => {
        const redis = new Redis(services.redisUrl);
        const prefix = `forge-test:${randomBytes(6).toString("hex")}`;
        const store = createRedisJobStore({ redis, prefix, ttlMs });
        return Object.assign(store, {
          async [Symbol.asyncDispose]() {
            const keys = await redis.keys(`${prefix}:*`);
            if (keys.length) await redis.del(...keys);
            redis.disconnect();
          },
        });
      }
    : undefined,
);

test("the file-backed store keeps its jobs across a restart, readable by its owner only", async () => {
  const dir = mkdtempSync(join(tmpdir(), "forge-jobs-"));
  try {
    const file = join(dir, "jobs.json");
    const id = newJobId();
    const at = new Date().toISOString();
    const a = createMemoryJobStore({ ttlMs: 1000, file });
    await a.create({ id, service_name: "keep", resource: "postgres", backend: "docker", status: "pending", created_at: at, updated_at: at, attempts: 0 });
    await a.transition(id, ["pending"], { status: "ready", url: "postgres://u:secret@127.0.0.1:1/d" });
    const b = createMemoryJobStore({ ttlMs: 1000, file });
    expect((await b.get(id))?.status).toBe("ready");
    expect(statSync(file).mode & 0o777).toBe(0o600);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
