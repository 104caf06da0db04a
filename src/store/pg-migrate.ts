/**
 * Applies the Postgres schema's migrations (/drizzle-pg, from pg-schema.ts) to a metadata
 * database, safely when several forge nodes start at once: one applies, the others wait for
 * it and find nothing left to do. Postgres' advisory lock serializes them, taken on the one
 * connection the migration runs on (a session lock), so a node that dies mid-way releases it.
 */
import { SQL } from "bun";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { drizzle } from "drizzle-orm/bun-sql";
import { migrate } from "drizzle-orm/bun-sql/migrator";
import { ErrorCode, ForgeError } from "../errors.ts";

const MIGRATIONS = resolve(dirname(fileURLToPath(import.meta.url)), "../../drizzle-pg");

/** The advisory lock's key: any 64-bit number, forge's own ("forge-mi" in ASCII). */
const MIGRATION_LOCK = 0x666f7267652d6d69n;

/** Migrates the database at `url` to the current schema; resolves once it is there. */
export async function migratePostgres(url: string): Promise<void> {
  // One connection: the lock, the migrations and the unlock all happen on it.
  const sql = new SQL(url, { max: 1 });
  try {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK})`;
    try {
      await migrate(drizzle({ client: sql }), { migrationsFolder: MIGRATIONS });
    } finally {
      await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`;
    }
  } catch (err) {
    throw new ForgeError(ErrorCode.ServiceUnavailable, 503, `could not migrate the metadata database: ${err instanceof Error ? err.message : String(err)}`, {
      hint: "check FORGE_DB (postgres://user:pass@host:port/db) and that the server answers",
      cause: err,
    });
  } finally {
    await sql.close();
  }
}
