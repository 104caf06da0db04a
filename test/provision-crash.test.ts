/**
 * Crash recovery on Redis Streams with real Docker: a broker (`forge up` running no worker)
 * and `forge worker` processes sharing one stream. A worker killed with SIGKILL in the middle
 * of a provision leaves its message pending; once its visibility timeout passes, a second
 * worker takes it over, adopts the container the first one made, and finishes the job:
 * exactly one container exists.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { SQL } from "bun";
import type { Subprocess } from "bun";
import type Dockerode from "dockerode";
import { Redis } from "ioredis";
import { ROOT, startForge, until, type ForgeProcess } from "./_helpers.ts";
import { requirePostgresImage, requireServices } from "./_services.ts";

interface Job {
  id: string;
  status: string;
  attempts: number;
  detail?: string;
  url?: string;
}

const services = requireServices("redisUrl");
const pg = services ? await requirePostgresImage() : undefined;

describe.skipIf(!services || !pg)("provisioning survives a worker killed mid-job (Redis)", () => {
  const prefix = `forge-test-${randomBytes(5).toString("hex")}`;
  let env: Record<string, string>;
  let broker: ForgeProcess;
  let docker: Dockerode;
  const workers: Subprocess[] = [];
  const jobs: string[] = [];

  beforeAll(async () => {
    if (!services || !pg) return;
    docker = pg.docker;
    env = {
      FORGE_REDIS_URL: services.redisUrl,
      FORGE_REDIS_PREFIX: prefix,
      FORGE_POSTGRES_IMAGE: pg.image,
      FORGE_QUEUE_VISIBILITY: "3s",
      FORGE_STEM_CELLS: "0",
    };
    broker = await startForge({ env: { ...env, FORGE_PROVISION_CONCURRENCY: "0" } });
  }, 300_000);

  afterAll(async () => {
    for (const w of workers) w.kill("SIGKILL");
    await broker?.[Symbol.asyncDispose]();
    for (const id of jobs) {
      await docker?.getContainer(`forge-pg-${id}`).remove({ force: true, v: true }).catch(() => {});
      await docker?.getVolume(`forge-pg-${id}`).remove().catch(() => {});
    }
    if (services) {
      const redis = new Redis(services.redisUrl);
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
    }
  });

  /** Starts `forge worker` and waits until it consumes. */
  async function startWorker(): Promise<{ proc: Subprocess; output: () => string }> {
    const proc = Bun.spawn([process.execPath, join(ROOT, "src/cli/main.ts"), "worker"], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", ...env },
      stdout: "pipe",
      stderr: "pipe",
    });
    workers.push(proc);
    let out = "";
    const dec = new TextDecoder();
    for (const s of [proc.stdout, proc.stderr]) {
      void (async () => {
        for await (const chunk of s as unknown as AsyncIterable<Uint8Array>) out += dec.decode(chunk);
      })();
    }
    await until(() => out.includes("running") || proc.exitCode !== null, 20_000, "the worker to start");
    if (proc.exitCode !== null) throw new Error(`forge worker exited with ${proc.exitCode}:\n${out}`);
    return { proc, output: () => out };
  }

  async function job(id: string): Promise<Job> {
    return (await (await broker.api(`/v1/provision/${id}`)).json()) as Job;
  }

  async function containersOf(id: string): Promise<number> {
    return (await docker.listContainers({ all: true, filters: { label: [`dev.forge.job=${id}`] } })).length;
  }

  test("kill -9 mid-provision: a second worker finishes the job, with exactly one container", async () => {
    const first = await startWorker();
    const res = await broker.api("/v1/provision", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ service_name: "crashy", backend: "docker" }) });
    expect(res.status).toBe(202);
    const { id } = (await res.json()) as Job;
    jobs.push(id);

    // The first worker took the job and made its container: now it dies without a word.
    await until(async () => (await job(id)).status === "provisioning" && (await containersOf(id)) === 1, 60_000, "the container");
    first.proc.kill("SIGKILL");
    await first.proc.exited;
    expect((await job(id)).status).toBe("provisioning");

    const second = await startWorker();
    const ready = await until(async () => {
      const j = await job(id);
      if (j.status === "failed") throw new Error(`job failed: ${j.detail}`);
      return j.status === "ready" ? j : undefined;
    }, 90_000, "the job to be ready");
    expect(ready.attempts).toBe(2);
    expect(await containersOf(id)).toBe(1);
    expect(second.output()).toContain("adopting container");

    const sql = new SQL(ready.url ?? "", { max: 1, connectionTimeout: 5 });
    try {
      expect(await sql`select 1 as one`).toEqual([{ one: 1 }]);
    } finally {
      await sql.close();
    }

    expect((await broker.api(`/v1/provision/${id}`, { method: "DELETE" })).status).toBe(202);
    await until(async () => (await job(id)).status === "deleted", 60_000, "the job to be deleted");
    expect(await containersOf(id)).toBe(0);
  }, 240_000);
});
