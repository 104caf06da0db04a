/**
 * The shared backend: a role and a database per job on one Postgres server (FORGE_PG_ADMIN_URL,
 * a role with CREATEROLE and CREATEDB), the fast path when a Postgres already runs. Names come
 * from the job id, so a redelivered job finds what an earlier attempt made: role
 * `forge_<jobId>`, database `app_<service>_<jobId>`, which PUBLIC may not connect to.
 */
import { SQL } from "bun";
import type { ConsolaInstance } from "consola";
import type { Connection, Credentials } from "../job.ts";
import { databaseName, randomSecret, waitForLogin, type CreateContext, type DatabaseBackend, type JobRef } from "./backend.ts";
import { scramVerifier } from "./_scram.ts";

export interface SharedBackendOptions {
  /** postgres:// URL of a role allowed to create roles and databases. */
  adminUrl: string;
  /** How long a new role may take to log in, ms. Default 15000. */
  readyTimeoutMs?: number;
  logger?: ConsolaInstance;
}

export function createSharedBackend(options: SharedBackendOptions): DatabaseBackend {
  return new SharedBackend(options);
}

export function sharedRoleName(jobId: string): string {
  return `forge_${jobId}`;
}

export function sharedDatabaseName(service: string, jobId: string): string {
  // Postgres cuts identifiers at 63 bytes: keep the job id whole.
  return `${databaseName(service).slice(0, 63 - jobId.length - 1)}_${jobId}`;
}

// --- internal ---

const DUPLICATE_OBJECT = "42710";
const DUPLICATE_DATABASE = "42P04";

class SharedBackend implements DatabaseBackend {
  readonly name = "shared" as const;
  private admin: SQL | undefined;
  private readonly host: string;
  private readonly port: number;

  constructor(private readonly o: SharedBackendOptions) {
    const url = new URL(o.adminUrl);
    this.host = url.hostname.replace(/^\[|\]$/g, "") || "127.0.0.1";
    this.port = Number(url.port) || 5432;
  }

  plan(job: JobRef): Credentials {
    return { username: sharedRoleName(job.id), password: randomSecret(), database: sharedDatabaseName(job.service_name, job.id) };
  }

  async create(job: JobRef, creds: Credentials, ctx: CreateContext): Promise<Connection> {
    const sql = this.sql();
    const role = ident(creds.username);
    const db = ident(creds.database);
    const password = literal(scramVerifier(creds.password));
    // 1. the role, created or (on a later attempt) given the job's password again
    const [roleRow] = await sql`select 1 as found from pg_roles where rolname = ${creds.username}`;
    if (roleRow) {
      await sql.unsafe(`ALTER ROLE ${role} WITH LOGIN PASSWORD ${password}`);
    } else {
      await sql.unsafe(`CREATE ROLE ${role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD ${password}`).catch(async (err: unknown) => {
        if (sqlState(err) !== DUPLICATE_OBJECT) throw err;
        await sql.unsafe(`ALTER ROLE ${role} WITH LOGIN PASSWORD ${password}`);
      });
    }
    // 2. its database (CREATE DATABASE cannot run in a transaction, so create-if-missing by hand)
    const [dbRow] = await sql`select 1 as found from pg_database where datname = ${creds.database}`;
    if (!dbRow) {
      await sql.unsafe(`CREATE DATABASE ${db} OWNER ${role}`).catch((err: unknown) => {
        if (sqlState(err) !== DUPLICATE_DATABASE) throw err;
      });
    }
    await sql.unsafe(`REVOKE ALL ON DATABASE ${db} FROM PUBLIC`);
    await sql.unsafe(`COMMENT ON DATABASE ${db} IS ${literal(`forge job ${job.id} (service ${job.service_name})`)}`);
    const conn: Connection = { host: this.host, port: this.port, ...creds };
    // 3. ready when the new role logs in
    await waitForLogin(conn, { timeoutMs: this.o.readyTimeoutMs ?? 15_000, ctx });
    this.o.logger?.info(`database ${job.id}: ${creds.database} on ${this.host}:${this.port}`);
    return conn;
  }

  async destroy(job: JobRef): Promise<void> {
    const sql = this.sql();
    const database = sharedDatabaseName(job.service_name, job.id);
    await sql.unsafe(`DROP DATABASE IF EXISTS ${ident(database)} WITH (FORCE)`);
    await sql.unsafe(`DROP ROLE IF EXISTS ${ident(sharedRoleName(job.id))}`);
  }

  async close(): Promise<void> {
    await this.admin?.close();
    this.admin = undefined;
  }

  private sql(): SQL {
    return (this.admin ??= new SQL(this.o.adminUrl, { max: 2, idleTimeout: 30, connectionTimeout: 10 }));
  }
}

function ident(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function literal(text: string): string {
  return `'${text.replaceAll("'", "''")}'`;
}

/** The SQLSTATE of a Postgres error (Bun's PostgresError keeps it in `errno`). */
function sqlState(err: unknown): string | undefined {
  if (typeof err !== "object" || err === null) return undefined;
  const e = err as { errno?: unknown; code?: unknown };
  return typeof e.errno === "string" ? e.errno : undefined;
}
