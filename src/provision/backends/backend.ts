/**
 * A database backend makes the database a job asks for, and takes it away. Both steps are
 * idempotent: the queue delivers at least once, so `create` may run again for a job whose
 * database (or half of it) already exists, and must adopt it; `destroy` of nothing is fine.
 */
import { randomBytes } from "node:crypto";
import { SQL } from "bun";
import { sleep } from "../_queue-shared.ts";
import type { BackendName, Connection, Credentials, ProvisionJob } from "../job.ts";

export type JobRef = Pick<ProvisionJob, "id" | "service_name">;

export interface CreateContext {
  /** Aborted when the worker is closing. */
  signal: AbortSignal;
  /** Call while waiting: keeps the job's message from going to another worker; throws once the job was deleted meanwhile. */
  heartbeat(): Promise<void>;
}

export interface DatabaseBackend {
  readonly name: BackendName;
  /** Credentials for a new job (the worker saves them before `create`, so every attempt uses the same). */
  plan(job: JobRef): Credentials;
  /** Creates, or adopts, the database of `job`; resolves once it accepts a login with the credentials. */
  create(job: JobRef, credentials: Credentials, ctx: CreateContext): Promise<Connection>;
  /** Removes everything `create` made for `job`; what is not there is skipped. */
  destroy(job: JobRef): Promise<void>;
  /**
   * How a container (a docker-driver instance, which has no network of its own) reaches the
   * database of `job`: a network to join and the address on it. Absent: containers cannot.
   */
  reachFromContainers?(job: JobRef): Promise<{ host: string; port: number; network: string }>;
  close(): Promise<void>;
}

/** `app_<service>` with the service's '-' as '_' (service names are DNS labels, so this is a safe identifier). */
export function databaseName(service: string): string {
  return `app_${service.replaceAll("-", "_")}`;
}

/** Hex: safe in URLs, SQL literals and environment variables without escaping. */
export function randomSecret(bytes = 24): string {
  return randomBytes(bytes).toString("hex");
}

export interface WaitOptions {
  timeoutMs: number;
  ctx: CreateContext;
  /** Runs about once a second while waiting; throws to give up (e.g. the container exited). */
  check?: () => Promise<void>;
}

/**
 * Waits until `conn` accepts a login and answers `select 1` (a TCP connect alone says little
 * about Postgres). Attempts overlap, one started every 100 ms (at most 4 at once): through
 * Docker's port proxy an attempt made before Postgres listens can hang for a second or more,
 * and a fresh one started just after Postgres is up should not wait for it.
 */
export async function waitForLogin(conn: Connection, o: WaitOptions): Promise<void> {
  const deadline = Date.now() + o.timeoutMs;
  let ready = false;
  let inFlight = 0;
  let last: unknown;
  let lastBeat = 0;
  while (!ready) {
    if (o.ctx.signal.aborted) throw new Error("the worker is closing");
    if (Date.now() > deadline) {
      throw new Error(`the database did not accept a login within ${Math.round(o.timeoutMs / 1000)} s: ${last instanceof Error ? last.message : String(last)}`);
    }
    if (inFlight < 4) {
      inFlight++;
      void canLogin(conn)
        .then(
          () => void (ready = true),
          (err: unknown) => void (last = err),
        )
        .finally(() => inFlight--);
    }
    if (Date.now() - lastBeat >= 1000) {
      lastBeat = Date.now();
      await o.ctx.heartbeat();
      await o.check?.();
    }
    await sleep(100, o.ctx.signal); // interval between overlapping attempts while Postgres starts
  }
}

/** Logs in with `conn` and runs `select 1`. */
export async function canLogin(conn: Connection, timeoutSeconds = 3): Promise<void> {
  const sql = new SQL({
    hostname: conn.host,
    port: conn.port,
    username: conn.username,
    password: conn.password,
    database: conn.database,
    max: 1,
    connectionTimeout: timeoutSeconds,
    idleTimeout: 1,
  });
  try {
    await sql`select 1`;
  } finally {
    await sql.close();
  }
}
