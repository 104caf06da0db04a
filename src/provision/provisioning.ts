/**
 * Builds the provisioner from a Config: Redis store and queue when FORGE_REDIS_URL is set (every
 * forge node and `forge worker` share them), else the in-process queue and a job store saved
 * in the data dir; the docker backend, and the shared one when FORGE_PG_ADMIN_URL is set; the
 * worker unless FORGE_PROVISION_CONCURRENCY is 0.
 */
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import type { Hono } from "hono";
import { Redis } from "ioredis";
import type { Config } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { connectDocker } from "../pool/index.ts";
import type { DatabaseBackend } from "./backends/backend.ts";
import { createDockerBackend } from "./backends/docker.ts";
import { createSharedBackend } from "./backends/shared.ts";
import type { BackendName } from "./job.ts";
import { createMemoryJobStore, type JobStore } from "./job-store.ts";
import { createMemoryQueue } from "./memory-queue.ts";
import type { Queue, RetryPolicy } from "./queue.ts";
import { createRedisJobStore } from "./redis-job-store.ts";
import { createRedisQueue } from "./redis-queue.ts";
import { provisionRoutes } from "./routes.ts";
import { ProvisionService } from "./service.ts";
import { ProvisionWorker, type ProvisionMessage } from "./worker.ts";

export interface Provisioning extends AsyncDisposable {
  service: ProvisionService;
  store: JobStore;
  queue: Queue<ProvisionMessage>;
  /** Undefined when this process runs no worker. */
  worker: ProvisionWorker | undefined;
  /** Mounts /v1/provision (for the router's `extend`). */
  routes: (v1: Hono) => void;
  /** The FunctionService's BindingResolver. */
  bindings: (databases: string[], options: { containers: boolean }) => Promise<{ env: Record<string, string>; networks: string[] }>;
  /** One line on what it runs on, for the start-up log. */
  summary: string;
  close(): Promise<void>;
}

export interface ProvisioningOptions {
  logger: ConsolaInstance;
  /** Jobs this process's worker handles at once; 0 runs no worker. Default config.provisionConcurrency. */
  concurrency?: number;
  /** Override the backends (tests inject failing ones). */
  backends?: Partial<Record<BackendName, DatabaseBackend>>;
  /** Override the retry policy of the jobs queue. */
  retry?: Partial<RetryPolicy>;
}

export const PROVISION_RETRY: RetryPolicy = { maxAttempts: 3, baseDelayMs: 1000, maxDelayMs: 30_000 };

export async function createProvisioning(config: Config, options: ProvisioningOptions): Promise<Provisioning> {
  const { logger } = options;
  if (config.provisionBackend === "shared" && !config.pgAdminUrl) {
    throw new ForgeError(ErrorCode.InvalidConfig, 400, "FORGE_PROVISION_BACKEND=shared needs FORGE_PG_ADMIN_URL", {
      hint: "set FORGE_PG_ADMIN_URL=postgres://admin:password@host:5432/postgres (a role with CREATEROLE and CREATEDB), or use the docker backend",
    });
  }
  // 1. store and queue
  const retry = { ...PROVISION_RETRY, ...options.retry };
  let redis: Redis | undefined;
  let store: JobStore;
  let queue: Queue<ProvisionMessage>;
  if (config.redisUrl) {
    redis = await connectRedis(config.redisUrl, logger);
    store = createRedisJobStore({ redis, prefix: config.redisPrefix, ttlMs: config.jobTtlMs });
    queue = createRedisQueue<ProvisionMessage>({ redis, key: `${config.redisPrefix}:jobs`, retry, visibilityTimeoutMs: config.queueVisibilityMs, logger });
  } else {
    store = createMemoryJobStore({ ttlMs: config.jobTtlMs, file: join(config.dataDir, "provision-jobs.json") });
    queue = createMemoryQueue<ProvisionMessage>({ name: "jobs", retry, visibilityTimeoutMs: config.queueVisibilityMs, logger });
  }

  // 2. backends
  const backends: Partial<Record<BackendName, DatabaseBackend>> = options.backends ?? {
    docker: createDockerBackend({ docker: connectDocker(config.dockerHost), image: config.postgresImage, logger }),
    ...(config.pgAdminUrl ? { shared: createSharedBackend({ adminUrl: config.pgAdminUrl, logger }) } : {}),
  };
  const names = Object.keys(backends) as BackendName[];

  // 3. broker and worker
  const service = new ProvisionService({
    store,
    queue,
    backends: names,
    defaultBackend: config.provisionBackend,
    logger,
    reachFromContainers: async (job) => backends[job.backend]?.reachFromContainers?.(job),
  });
  const concurrency = options.concurrency ?? config.provisionConcurrency;
  if (concurrency === 0 && !redis) {
    logger.warn("provisioner: FORGE_PROVISION_CONCURRENCY=0 without FORGE_REDIS_URL: no worker can reach this process's queue, so database jobs will wait");
  }
  const worker = concurrency > 0 ? new ProvisionWorker({ store, queue, backends, logger, concurrency, heartbeatEveryMs: Math.max(50, Math.floor(config.queueVisibilityMs / 3)) }) : undefined;
  // The in-process queue forgot its messages with the last process: file them again for unfinished jobs.
  if (!redis) await requeueUnfinished(store, queue);
  worker?.start();

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closed ??= (async () => {
      await worker?.close();
      await queue.close();
      await store.close();
      await Promise.all(Object.values(backends).map((b) => b.close()));
      redis?.disconnect();
    })());

  const where = redis ? `Redis (${config.redisPrefix}:jobs)` : "in-process queue";
  return {
    service,
    store,
    queue,
    worker,
    routes: provisionRoutes(service),
    bindings: (databases, options) => service.bindingsFor(databases, options),
    summary: `provisioner: ${where}, backends ${names.join(" + ")} (default ${config.provisionBackend}), ${worker ? `worker x${concurrency}` : "no worker here"}`,
    close,
    [Symbol.asyncDispose]: close,
  };
}

// --- internal ---

async function connectRedis(url: string, logger: ConsolaInstance): Promise<Redis> {
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 5 });
  // ioredis reconnects by itself; without a listener each failure would be an unhandled error event.
  redis.on("error", (err: Error) => logger.warn(`redis: ${err.message}`));
  try {
    await Promise.race([
      redis.connect().then(() => redis.ping()),
      new Promise((_, reject) => setTimeout(() => reject(new Error("no answer within 5 s")), 5000).unref()),
    ]);
    return redis;
  } catch (cause) {
    redis.disconnect();
    throw new ForgeError(ErrorCode.ServiceUnavailable, 503, `cannot reach Redis at FORGE_REDIS_URL: ${cause instanceof Error ? cause.message : String(cause)}`, {
      hint: "start Redis or fix FORGE_REDIS_URL; unset it to use the in-process queue",
      cause,
    });
  }
}

async function requeueUnfinished(store: JobStore, queue: Queue<ProvisionMessage>): Promise<void> {
  let cursor: string | undefined;
  do {
    const page = await store.list({ limit: 100, ...(cursor ? { cursor } : {}) });
    for (const job of page.jobs) {
      if (job.status === "pending" || job.status === "provisioning") await queue.enqueue({ job: job.id, op: "create" });
      if (job.status === "deleting") await queue.enqueue({ job: job.id, op: "delete" });
    }
    cursor = page.nextCursor ?? undefined;
  } while (cursor);
}
