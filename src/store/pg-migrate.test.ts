/** The Postgres metadata schema: migrations applied by several nodes at once, on the real server. */
import { describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { requireServices } from "../../test/_services.ts";
import { migratePostgres } from "./pg-migrate.ts";

const admin = requireServices("pgUrl")?.pgUrl;

describe.skipIf(!admin)("migratePostgres", () => {
  test("three nodes starting at once on an empty database: all succeed, every table is made once, each migration recorded once", async () => {
    const url = new URL(admin as string);
    const name = `forge_migrate_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const server = new SQL(url.toString());
    await server.unsafe(`create database ${name}`);
    const dbUrl = new URL(url.toString());
    dbUrl.pathname = `/${name}`;
    try {
      await Promise.all([migratePostgres(dbUrl.toString()), migratePostgres(dbUrl.toString()), migratePostgres(dbUrl.toString())]);
      // A later start finds nothing to do.
      await migratePostgres(dbUrl.toString());
      const db = new SQL(dbUrl.toString());
      try {
        const tables = (await db`select table_name from information_schema.tables where table_schema = 'public' order by table_name`) as { table_name: string }[];
        expect(tables.map((t) => t.table_name)).toEqual(["artifacts", "functions", "invocation_batches", "invocations", "nodes", "schedules", "settings", "versions"]);
        const applied = (await db`select count(*)::int as n from drizzle.__drizzle_migrations`) as { n: number }[];
        expect(applied[0]?.n).toBe(2);
      } finally {
        await db.close();
      }
    } finally {
      await server.unsafe(`drop database if exists ${name} with (force)`);
      await server.close();
    }
  });

  test("an unreachable server is a 503 naming FORGE_DB", async () => {
    const err = await migratePostgres("postgres://forge@127.0.0.1:1/none").catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 503, hint: expect.stringContaining("FORGE_DB") });
  });
});
