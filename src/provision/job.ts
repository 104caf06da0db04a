/** A provisioning job: the record the broker returns and the worker moves through its statuses. */
import { randomBytes } from "node:crypto";

export type JobStatus = "pending" | "provisioning" | "ready" | "failed" | "deleting" | "deleted";
export type BackendName = "docker" | "shared";
export type ResourceKind = "postgres";

export const BACKENDS: readonly BackendName[] = ["docker", "shared"];

/** Statuses whose record is kept until its TTL, then dropped: nothing of them is left running. */
export const EXPIRING: readonly JobStatus[] = ["failed", "deleted"];

export interface Connection {
  host: string;
  port: number;
  username: string;
  password: string;
  database: string;
}

/** What the worker decides before creating anything; the backend adds where the server is. */
export type Credentials = Pick<Connection, "username" | "password" | "database">;

export interface ProvisionJob {
  id: string;
  service_name: string;
  resource: ResourceKind;
  backend: BackendName;
  status: JobStatus;
  /** ISO 8601. */
  created_at: string;
  /** ISO 8601, the last status change. */
  updated_at: string;
  /** Provisioning attempts started so far. */
  attempts: number;
  /** Why it failed (failed), or why a delete is stuck (deleting). */
  detail?: string;
  /** Set while ready. */
  connection?: Connection;
  /**
   * Chosen once, when provisioning starts, and reused by every attempt, so that a redelivered
   * job re-creates the same role with the same password. Never shown to clients.
   */
  credentials?: Credentials;
  /** postgres:// URL of `connection`. */
  url?: string;
}

/** Fields a status change may set; `null` removes one. */
export type JobPatch = { status?: JobStatus; attempts?: number } & {
  [K in "detail" | "connection" | "url" | "credentials"]?: ProvisionJob[K] | null;
};

/** Job ids sort by creation time (newest last) and are safe in container, role and database names. */
export const JOB_ID_PATTERN = /^[0-9a-z]{16}$/;

let lastIdTime = 0;

export function newJobId(now = Date.now()): string {
  // Strictly increasing in this process, so two jobs filed in one millisecond still list in order.
  lastIdTime = Math.max(now, lastIdTime + 1);
  const time = lastIdTime.toString(36).padStart(9, "0");
  const bytes = randomBytes(7);
  let rand = "";
  for (const b of bytes) rand += (b % 36).toString(36);
  return time + rand;
}

export function postgresUrl(c: Connection): string {
  return `postgres://${encodeURIComponent(c.username)}:${encodeURIComponent(c.password)}@${c.host.includes(":") ? `[${c.host}]` : c.host}:${c.port}/${encodeURIComponent(c.database)}`;
}

/** The record as clients see it: what a status does not carry is left out. */
export function publicJob(job: ProvisionJob): ProvisionJob {
  const { connection, url, detail, credentials: _secret, ...rest } = job;
  return {
    ...rest,
    ...(detail ? { detail } : {}),
    ...(job.status === "ready" && connection ? { connection } : {}),
    ...(job.status === "ready" && url ? { url } : {}),
  };
}

/** Applies a patch the way every store does (null deletes). */
export function applyPatch(job: ProvisionJob, patch: JobPatch, now: Date): ProvisionJob {
  const next: Record<string, unknown> = { ...job };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete next[k];
    else if (v !== undefined) next[k] = v;
  }
  next.updated_at = now.toISOString();
  return next as unknown as ProvisionJob;
}
