/**
 * The worker's decisions, on the memory store and queue with a scripted backend (real
 * backends, Redis and Docker are in test/provision-*.test.ts): statuses, credentials kept
 * across attempts, DELETE racing a provision, dead letters ending failed.
 */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { until } from "../../test/_helpers.ts";
import type { CreateContext, DatabaseBackend, JobRef } from "./backends/backend.ts";
import { publicJob, type Connection, type Credentials, type ProvisionJob } from "./job.ts";
import { createMemoryJobStore } from "./job-store.ts";
import { createMemoryQueue } from "./memory-queue.ts";
import { PermanentError } from "./queue.ts";
import { ProvisionService } from "./service.ts";
import { ProvisionWorker, type ProvisionMessage } from "./worker.ts";

interface Script {
  create?: (job: JobRef, creds: Credentials, ctx: CreateContext, call: number) => Promise<Connection>;
}

function scripted(script: Script = {}): DatabaseBackend & { creates: Credentials[]; destroyed: string[] } {
  const creates: Credentials[] = [];
  const destroyed: string[] = [];
  return {
    name: "shared",
    creates,
    destroyed,
    plan: (job) => ({ username: `forge_${job.id}`, password: crypto.randomUUID(), database: `app_${job.id}` }),
    async create(job, creds, ctx) {
      creates.push(creds);
      if (script.create) return script.create(job, creds, ctx, creates.length);
      return { host: "127.0.0.1", port: 5432, ...creds };
    },
    async destroy(job) {
      destroyed.push(job.id);
    },
    async close() {},
  };
}

async function setup(backend: DatabaseBackend, maxAttempts = 3) {
  const logger = createConsola({ level: -999 });
  const store = createMemoryJobStore({ ttlMs: 60_000 });
  const queue = createMemoryQueue<ProvisionMessage>({ retry: { maxAttempts, baseDelayMs: 5, maxDelayMs: 10 }, visibilityTimeoutMs: 5_000 });
  const service = new ProvisionService({ store, queue, backends: ["shared"], defaultBackend: "shared", logger });
  const worker = new ProvisionWorker({ store, queue, backends: { shared: backend }, logger, concurrency: 4 });
  worker.start();
  return {
    store,
    queue,
    service,
    async waitFor(id: string, status: ProvisionJob["status"]): Promise<ProvisionJob> {
      return until(async () => {
        const job = await store.get(id);
        return job?.status === status ? job : undefined;
      }, 5000, `job ${id} to be ${status}`);
    },
    async [Symbol.asyncDispose]() {
      await worker.close();
      await queue.close();
    },
  };
}

function deferred<T = void>() {
  let resolve!: (v: T) => void; // assigned synchronously by the Promise constructor
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

describe("provision worker", () => {
  test("pending -> provisioning -> ready with connection and url; the record hides the credentials", async () => {
    const backend = scripted();
    await using s = await setup(backend);
    const job = await s.service.create({ service_name: "checkout" });
    expect(job.status).toBe("pending");
    const ready = await s.waitFor(job.id, "ready");
    expect(ready.connection).toMatchObject({ host: "127.0.0.1", port: 5432, username: `forge_${job.id}` });
    expect(ready.url).toStartWith(`postgres://forge_${job.id}:`);
    expect(ready.attempts).toBe(1);
    expect(ready.credentials?.password).toBe(ready.connection?.password ?? "-");
    expect(publicJob(ready)).not.toHaveProperty("credentials");
  });

  test("a retried job reuses the credentials of its first attempt", async () => {
    const backend = scripted({
      create: async (_job, creds, _ctx, call) => {
        if (call === 1) throw new Error("connection reset");
        return { host: "127.0.0.1", port: 1, ...creds };
      },
    });
    await using s = await setup(backend);
    const job = await s.service.create({ service_name: "retry" });
    const ready = await s.waitFor(job.id, "ready");
    expect(ready.attempts).toBe(2);
    expect(backend.creates).toHaveLength(2);
    expect(backend.creates[1]).toEqual(backend.creates[0] as Credentials);
  });

  test("a job failing every attempt ends failed with its reason, cleaned up, in dead letters", async () => {
    const backend = scripted({
      create: async (_job, creds) => {
        throw new Error(`disk full (password ${creds.password} must not leak)`);
      },
    });
    await using s = await setup(backend);
    const job = await s.service.create({ service_name: "doomed" });
    const failed = await s.waitFor(job.id, "failed");
    expect(failed.detail).toContain("after 3 attempt(s): disk full");
    expect(failed.detail).not.toContain(backend.creates[0]?.password ?? "-");
    expect(failed.credentials).toBeUndefined();
    expect(backend.destroyed).toContain(job.id);
    const dead = await s.queue.deadLetters();
    expect(dead[0]).toMatchObject({ body: { job: job.id, op: "create" }, attempts: 3 });
  });

  test("a PermanentError fails the job at once", async () => {
    const backend = scripted({
      create: async () => {
        throw new PermanentError("image missing");
      },
    });
    await using s = await setup(backend);
    const job = await s.service.create({ service_name: "perm" });
    const failed = await s.waitFor(job.id, "failed");
    expect(failed.attempts).toBe(1);
    expect(failed.detail).toContain("image missing");
  });

  test("a DELETE while the backend creates ends deleted, and what was made is destroyed", async () => {
    const started = deferred();
    const release = deferred();
    const backend = scripted({
      create: async (_job, creds) => {
        started.resolve();
        await release.promise;
        return { host: "127.0.0.1", port: 1, ...creds };
      },
    });
    await using s = await setup(backend);
    const job = await s.service.create({ service_name: "race" });
    await started.promise;
    const del = await s.service.delete(job.id);
    expect(del).toMatchObject({ accepted: true, job: { status: "deleting" } });
    await s.waitFor(job.id, "deleted");
    release.resolve(); // the create finishes after the delete: it must not win
    await s.waitFor(job.id, "deleted");
    await until(() => backend.destroyed.filter((id) => id === job.id).length >= 2, 5000, "a second destroy");
    expect(backend.destroyed.filter((id) => id === job.id)).toHaveLength(2);
    expect((await s.store.get(job.id))?.status).toBe("deleted");
    expect((await s.service.delete(job.id)).accepted).toBe(false);
  });

  test("a DELETE noticed by a heartbeat stops the wait early", async () => {
    const backend = scripted({
      create: async (_job, _creds, ctx) => {
        for (;;) {
          await Bun.sleep(5); // a database that never gets ready
          await ctx.heartbeat();
        }
      },
    });
    await using s = await setup(backend);
    const job = await s.service.create({ service_name: "slow" });
    await s.waitFor(job.id, "provisioning");
    await s.service.delete(job.id);
    await s.waitFor(job.id, "deleted");
    await until(() => backend.destroyed.filter((id) => id === job.id).length >= 2, 5000, "a second destroy");
    expect(backend.destroyed.filter((id) => id === job.id)).toHaveLength(2);
  });

  test("deleting a pending job never provisions it", async () => {
    const backend = scripted();
    const logger = createConsola({ level: -999 });
    const store = createMemoryJobStore({ ttlMs: 60_000 });
    const queue = createMemoryQueue<ProvisionMessage>({ retry: { maxAttempts: 1 } });
    const service = new ProvisionService({ store, queue, backends: ["shared"], defaultBackend: "shared", logger });
    const job = await service.create({ service_name: "never" });
    await service.delete(job.id);
    await using worker = new ProvisionWorker({ store, queue, backends: { shared: backend }, logger });
    worker.start();
    await until(async () => (await store.get(job.id))?.status === "deleted", 5000, "the job deleted");
    expect((await store.get(job.id))?.status).toBe("deleted");
    expect(backend.creates).toHaveLength(0);
    await queue.close();
  });
});
