/**
 * The provisioning broker: validates requests, files jobs and their queue messages, answers
 * status, and resolves database bindings of functions. It knows nothing of HTTP (routes.ts)
 * and never touches a database itself (the worker does).
 */
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError, NAME_PATTERN } from "../errors.ts";
import { BACKENDS, JOB_ID_PATTERN, newJobId, postgresUrl, type BackendName, type JobStatus, type ProvisionJob } from "./job.ts";
import type { JobPage, JobStore } from "./job-store.ts";
import type { Queue } from "./queue.ts";
import type { ProvisionMessage } from "./worker.ts";

export interface ProvisionServiceOptions {
  store: JobStore;
  queue: Queue<ProvisionMessage>;
  /** Backends new jobs may ask for. */
  backends: readonly BackendName[];
  /** Backend of a job that names none. */
  defaultBackend: BackendName;
  logger: ConsolaInstance;
  /** How a container reaches a job's database (the backend's reachFromContainers); absent: it cannot. */
  reachFromContainers?: (job: ProvisionJob) => Promise<{ host: string; port: number; network: string } | undefined>;
}

export interface CreateJobInput {
  service_name: string;
  resource?: "postgres";
  backend?: BackendName;
}

export const MAX_PAGE = 100;

export class ProvisionService {
  constructor(private readonly o: ProvisionServiceOptions) {}

  /** Files a job from a request body (validated here: anything unexpected is a 400 with a hint). */
  async create(body: unknown): Promise<ProvisionJob> {
    const input = this.parseCreate(body);
    const now = new Date();
    const job: ProvisionJob = {
      id: newJobId(now.getTime()),
      service_name: input.service_name,
      resource: "postgres",
      backend: input.backend ?? this.o.defaultBackend,
      status: "pending",
      created_at: now.toISOString(),
      updated_at: now.toISOString(),
      attempts: 0,
    };
    await this.o.store.create(job);
    try {
      await this.o.queue.enqueue({ job: job.id, op: "create" });
    } catch (cause) {
      await this.o.store.transition(job.id, ["pending"], { status: "failed", detail: "the job could not be queued" }).catch(() => undefined);
      throw new ForgeError(ErrorCode.ServiceUnavailable, 503, "the provisioning queue is unavailable", { hint: "check that Redis (FORGE_REDIS_URL) is reachable, then retry", cause });
    }
    this.o.logger.info(`provision: filed ${job.id} (${job.service_name}, ${job.backend})`);
    return job;
  }

  async get(id: string): Promise<ProvisionJob> {
    const job = JOB_ID_PATTERN.test(id) ? await this.o.store.get(id) : undefined;
    if (!job) throw notFound(id);
    return job;
  }

  async list(query: { limit?: string | undefined; cursor?: string | undefined } = {}): Promise<JobPage> {
    let limit = 20;
    if (query.limit !== undefined) {
      limit = Number(query.limit);
      if (!/^\d+$/.test(query.limit) || limit < 1 || limit > MAX_PAGE) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `limit must be a whole number from 1 to ${MAX_PAGE}, got ${JSON.stringify(query.limit.slice(0, 40))}`, {
          hint: "e.g. GET /v1/provision?limit=20",
        });
      }
    }
    if (query.cursor !== undefined && !JOB_ID_PATTERN.test(query.cursor)) {
      throw new ForgeError(ErrorCode.BadRequest, 400, "cursor is not one this API gave out", { hint: "pass the next_cursor of the previous page, or leave it out for the first page" });
    }
    return this.o.store.list({ limit, ...(query.cursor ? { cursor: query.cursor } : {}) });
  }

  /** Starts deleting a job's database; `accepted` is false when it was already deleted (idempotent). */
  async delete(id: string): Promise<{ job: ProvisionJob; accepted: boolean }> {
    const job = await this.get(id);
    if (job.status === "deleted") return { job, accepted: false };
    const from: JobStatus[] = ["pending", "provisioning", "ready", "failed", "deleting"];
    const moved = await this.o.store.transition(id, from, { status: "deleting", detail: null });
    if (!moved.job) throw notFound(id);
    if (!moved.ok) return { job: moved.job, accepted: false };
    // Queued again on a repeated DELETE too: that is how a stuck delete is retried.
    await this.o.queue.enqueue({ job: id, op: "delete" });
    return { job: moved.job, accepted: true };
  }

  /**
   * Environment of a function bound to `databases`: DATABASE_URL and PGHOST, PGPORT, PGUSER,
   * PGPASSWORD, PGDATABASE of the first, and <NAME>_DATABASE_URL of each (checkout-db ->
   * CHECKOUT_DB_DATABASE_URL). The newest ready database of that service name is bound.
   */
  async bindings(databases: string[]): Promise<Record<string, string>> {
    return (await this.bindingsFor(databases, { containers: false })).env;
  }

  /**
   * The same for an instance in a container (docker driver), which has no network of its
   * own: the address of each database on an internal network the instance joins.
   */
  async bindingsFor(databases: string[], options: { containers: boolean }): Promise<{ env: Record<string, string>; networks: string[] }> {
    const env: Record<string, string> = {};
    const networks: string[] = [];
    for (const [i, name] of databases.entries()) {
      const job = await this.boundJob(name);
      let c = job.connection;
      if (!c || !job.url) throw notReady(name, job);
      if (options.containers) {
        const reach = this.o.reachFromContainers ? await this.o.reachFromContainers(job) : undefined;
        if (!reach) {
          throw new ForgeError(ErrorCode.DatabaseNotReady, 400, `database ${name} (backend ${job.backend}) cannot be reached from a container`, {
            hint: "the shared backend's server listens on the host's loopback, which docker instances cannot reach: bind a database of the docker backend (forge db create --backend docker), or run forge with FORGE_DRIVER=process",
          });
        }
        c = { ...c, host: reach.host, port: reach.port };
        networks.push(reach.network);
      }
      const url = options.containers ? postgresUrl(c) : job.url;
      env[`${name.toUpperCase().replaceAll("-", "_")}_DATABASE_URL`] = url;
      if (i === 0) {
        Object.assign(env, { DATABASE_URL: url, PGHOST: c.host, PGPORT: String(c.port), PGUSER: c.username, PGPASSWORD: c.password, PGDATABASE: c.database });
      }
    }
    return { env, networks };
  }

  // --- internal ---

  private async boundJob(name: string): Promise<ProvisionJob> {
    let fallback: ProvisionJob | undefined;
    let cursor: string | undefined;
    do {
      const page = await this.o.store.list({ limit: MAX_PAGE, ...(cursor ? { cursor } : {}) });
      for (const job of page.jobs) {
        if (job.service_name !== name) continue;
        if (job.status === "ready") return job;
        if (job.status === "pending" || job.status === "provisioning") fallback ??= job;
      }
      cursor = page.nextCursor ?? undefined;
    } while (cursor);
    if (fallback) throw notReady(name, fallback);
    throw new ForgeError(ErrorCode.DatabaseNotFound, 400, `no database named ${name} to bind`, {
      hint: `create it with \`forge db create ${name}\` (POST /v1/provision {"service_name":"${name}"}), wait until it is ready, then deploy again`,
    });
  }

  private parseCreate(body: unknown): CreateJobInput {
    const example = `e.g. {"service_name": "checkout", "resource": "postgres"}`;
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new ForgeError(ErrorCode.BadRequest, 400, "the request body must be a JSON object", { hint: example });
    }
    const o = body as Record<string, unknown>;
    for (const key of Object.keys(o)) {
      if (!["service_name", "resource", "backend"].includes(key)) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `unknown field "${key.slice(0, 40)}"`, { hint: `the fields are service_name, resource and backend; ${example}` });
      }
    }
    if (typeof o.service_name !== "string" || !NAME_PATTERN.test(o.service_name)) {
      const got = typeof o.service_name === "string" ? `"${o.service_name.slice(0, 80)}"` : o.service_name === undefined ? "nothing" : typeof o.service_name;
      throw new ForgeError(ErrorCode.InvalidName, 400, `service_name must be a DNS label, got ${got}`, {
        hint: `lowercase letters, digits and '-', starting with a letter, at most 63 characters; ${example}`,
      });
    }
    if (o.resource !== undefined && o.resource !== "postgres") {
      throw new ForgeError(ErrorCode.BadRequest, 400, `resource ${JSON.stringify(o.resource)?.slice(0, 40)} is not supported`, {
        hint: `forge provisions "postgres" (the default when resource is left out)`,
      });
    }
    if (o.backend !== undefined) {
      if (typeof o.backend !== "string" || !(BACKENDS as readonly string[]).includes(o.backend)) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `backend ${JSON.stringify(o.backend)?.slice(0, 40)} is not one of ${BACKENDS.join(", ")}`, {
          hint: `leave it out for this forge's default (${this.o.defaultBackend})`,
        });
      }
      if (!this.o.backends.includes(o.backend as BackendName)) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `the ${o.backend} backend is not configured on this forge`, {
          hint: o.backend === "shared" ? "set FORGE_PG_ADMIN_URL to a Postgres admin URL and restart forge" : `use one of: ${this.o.backends.join(", ")}`,
        });
      }
    }
    return { service_name: o.service_name, ...(o.backend !== undefined ? { backend: o.backend as BackendName } : {}) };
  }
}

function notFound(id: string): ForgeError {
  return new ForgeError(ErrorCode.JobNotFound, 404, `no provisioning job ${id.slice(0, 40)}`, { hint: "list jobs with `forge db list` (GET /v1/provision); deleted and failed jobs expire after FORGE_JOB_TTL" });
}

function notReady(name: string, job: ProvisionJob): ForgeError {
  return new ForgeError(ErrorCode.DatabaseNotReady, 400, `database ${name} is ${job.status}, not ready`, {
    hint: `wait until \`forge db status ${job.id}\` says ready, then deploy again`,
  });
}
