/**
 * The provisioning worker: takes `create` and `delete` messages from the queue and moves jobs
 * through their statuses with compare-and-set, so that it stays right under at-least-once
 * delivery, several workers, and DELETEs that land mid-way:
 *
 *   create: pending -> provisioning (credentials chosen once) -> backend.create -> ready
 *           (if the job went deleting/deleted meanwhile, what was made is destroyed instead)
 *   delete: deleting -> backend.destroy -> deleted
 *   dead letter: a create that used up its attempts destroys what it made and ends failed
 *
 * It runs inside `forge up` by default; `forge worker` runs it alone against FORGE_REDIS_URL.
 */
import type { ConsolaInstance } from "consola";
import type { CreateContext, DatabaseBackend, JobRef } from "./backends/backend.ts";
import { postgresUrl, type BackendName, type Connection, type ProvisionJob } from "./job.ts";
import type { JobStore } from "./job-store.ts";
import { StaleDelivery } from "./_queue-shared.ts";
import { PermanentError, type Consumer, type DeadLetter, type HandlerContext, type Queue, type QueueMessage } from "./queue.ts";

export interface ProvisionMessage {
  job: string;
  op: "create" | "delete";
}

export interface ProvisionWorkerOptions {
  store: JobStore;
  queue: Queue<ProvisionMessage>;
  backends: Partial<Record<BackendName, DatabaseBackend>>;
  logger: ConsolaInstance;
  /** Jobs handled at once. Default 4. */
  concurrency?: number;
  /** How often a job in hand heartbeats its queue message; keep it well under the visibility timeout. Default 10000. */
  heartbeatEveryMs?: number;
}

export class ProvisionWorker implements AsyncDisposable {
  private consumer: Consumer | undefined;

  constructor(private readonly o: ProvisionWorkerOptions) {}

  start(): void {
    this.consumer ??= this.o.queue.consume((msg, ctx) => this.handle(msg, ctx), {
      concurrency: this.o.concurrency ?? 4,
      onDeadLetter: (letter) => this.onDeadLetter(letter),
    });
  }

  /** Stops taking jobs; jobs in hand go back to the queue for another worker. */
  async close(): Promise<void> {
    await this.consumer?.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internal ---

  private async handle(msg: QueueMessage<ProvisionMessage>, queued: HandlerContext): Promise<void> {
    const { job: id } = msg.body;
    // Heartbeats run on a timer, whatever step the backend is in (pulling, starting, waiting): the
    // visibility timeout is there to notice a dead worker, not a slow Docker. When another worker
    // took the message over meanwhile, this one stops.
    const stop = new AbortController();
    const onClose = (): void => stop.abort();
    queued.signal.addEventListener("abort", onClose, { once: true });
    const beat = setInterval(() => {
      queued.heartbeat().catch((err: unknown) => {
        if (err instanceof StaleDelivery) {
          this.o.logger.warn(`provision: ${id} went to another worker; stopping here`);
          stop.abort();
        } else {
          this.o.logger.warn(`provision: heartbeat of ${id} failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      });
    }, this.o.heartbeatEveryMs ?? 10_000);
    const ctx: HandlerContext = { signal: stop.signal, heartbeat: () => queued.heartbeat() };
    try {
      await this.run(msg, ctx);
    } finally {
      clearInterval(beat);
      queued.signal.removeEventListener("abort", onClose);
    }
  }

  private async run(msg: QueueMessage<ProvisionMessage>, ctx: HandlerContext): Promise<void> {
    const { job: id, op } = msg.body;
    const job = await this.o.store.get(id);
    if (!job) {
      this.o.logger.warn(`provision: job ${id} is gone (expired?); dropping its ${op} message`);
      return;
    }
    try {
      if (op === "delete") await this.remove(job);
      else await this.provision(job, msg.attempt, ctx);
    } catch (err) {
      if (!(err instanceof PermanentError)) this.o.logger.warn(`provision: ${op} of ${id} failed on attempt ${msg.attempt}: ${redact(err instanceof Error ? err.message : String(err), job)}`);
      throw err;
    }
  }

  private async provision(job: ProvisionJob, attempt: number, qctx: HandlerContext): Promise<void> {
    if (job.status !== "pending" && job.status !== "provisioning") return; // done, failed or being deleted
    const backend = this.backend(job);
    const { store, logger } = this.o;
    // 1. provisioning; the first attempt picks the credentials every later attempt reuses
    const moved =
      job.status === "pending"
        ? await store.transition(job.id, ["pending"], { status: "provisioning", attempts: 1, credentials: backend.plan(job) })
        : await store.transition(job.id, ["provisioning"], { attempts: job.attempts + 1 });
    const current = moved.job;
    if (!current || current.status !== "provisioning") return;
    const credentials = current.credentials;
    if (!credentials) throw new PermanentError(`job ${job.id} is provisioning without credentials`);
    logger.info(`provision: ${job.id} (${job.service_name}) on ${backend.name}, attempt ${attempt}`);

    // 2. create or adopt; the heartbeat also notices a DELETE that lands meanwhile
    const ctx: CreateContext = {
      signal: qctx.signal,
      heartbeat: async () => {
        await qctx.heartbeat();
        const now = await store.get(job.id);
        if (!now || now.status === "deleting" || now.status === "deleted") throw new JobCancelled(job.id);
      },
    };
    let connection: Connection;
    try {
      connection = await backend.create(job, credentials, ctx);
    } catch (err) {
      if (!(err instanceof JobCancelled)) throw err;
      logger.info(`provision: ${job.id} was deleted while provisioning; removing what was made`);
      await backend.destroy(job);
      return;
    }

    // 3. ready, unless it was deleted meanwhile: then what was just made goes (the delete may have run before it existed)
    const done = await store.transition(job.id, ["provisioning"], { status: "ready", connection, url: postgresUrl(connection), detail: null });
    if (done.ok) {
      logger.success(`provision: ${job.id} (${job.service_name}) ready on ${backend.name} at ${connection.host}:${connection.port}`);
      return;
    }
    if (done.job?.status === "deleting" || done.job?.status === "deleted") {
      logger.info(`provision: ${job.id} was deleted while provisioning; removing what was made`);
      await backend.destroy(job);
    }
  }

  private async remove(job: ProvisionJob): Promise<void> {
    if (job.status !== "deleting") return;
    const backend = this.backend(job);
    await backend.destroy(job);
    const done = await this.o.store.transition(job.id, ["deleting"], { status: "deleted", connection: null, url: null, credentials: null, detail: null });
    if (done.ok) this.o.logger.info(`provision: ${job.id} (${job.service_name}) deleted`);
  }

  private async onDeadLetter(letter: DeadLetter<ProvisionMessage>): Promise<void> {
    const { store, logger } = this.o;
    const job = await store.get(letter.body.job);
    if (!job) return;
    const reason = redact(letter.reason, job);
    if (letter.body.op === "create") {
      if (job.status !== "pending" && job.status !== "provisioning") return;
      // Leave nothing running for a record that will expire.
      const backend = this.o.backends[job.backend];
      await backend?.destroy(job).catch((err: unknown) => logger.error(`provision: could not clean up after ${job.id} failed:`, err));
      const detail = `provisioning failed after ${letter.attempts} attempt(s): ${reason}`;
      const failed = await store.transition(job.id, ["pending", "provisioning"], { status: "failed", detail, credentials: null, connection: null, url: null });
      if (failed.ok) logger.error(`provision: ${job.id} (${job.service_name}) failed: ${detail}`);
    } else {
      const detail = `delete failed after ${letter.attempts} attempt(s): ${reason}; DELETE it again to retry`;
      await store.transition(job.id, ["deleting"], { detail });
      logger.error(`provision: ${job.id} (${job.service_name}): ${detail}`);
    }
  }

  private backend(job: JobRef & { backend: BackendName }): DatabaseBackend {
    const backend = this.o.backends[job.backend];
    if (!backend) {
      throw new PermanentError(
        `this worker has no ${job.backend} backend` + (job.backend === "shared" ? " (set FORGE_PG_ADMIN_URL where the worker runs)" : " (is Docker reachable where the worker runs?)"),
      );
    }
    return backend;
  }
}

/** The job was deleted while its database was being made. */
class JobCancelled extends Error {
  override readonly name = "JobCancelled";
  constructor(id: string) {
    super(`job ${id} was deleted while provisioning`);
  }
}

/** Error text may quote a URL or a statement: never let the password reach a log or a record. */
function redact(text: string, job: ProvisionJob): string {
  const secret = job.credentials?.password ?? job.connection?.password;
  return secret ? text.replaceAll(secret, "***") : text;
}
