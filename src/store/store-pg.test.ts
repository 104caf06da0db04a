/**
 * The store contract (store.case.ts) on a real Postgres server: one fresh database per run
 * (CREATE DATABASE through the superuser URL, dropped WITH (FORCE) after), emptied between
 * tests. Under CI a missing FORGE_TEST_PG_URL fails the run rather than skipping it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { requireServices } from "../../test/_services.ts";
import { migratePostgres } from "./pg-migrate.ts";
import { openPgStore } from "./pg-store.ts";
import { config, storeContract } from "./store.case.ts";

const admin = requireServices("pgUrl")?.pgUrl;

describe.skipIf(!admin)("postgres", () => {
  const name = `forge_store_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  let server: SQL;
  let dbUrl: string;

  beforeAll(async () => {
    server = new SQL(admin as string);
    await server.unsafe(`create database ${name}`);
    const url = new URL(admin as string);
    url.pathname = `/${name}`;
    dbUrl = url.toString();
    await migratePostgres(dbUrl);
  });

  afterAll(async () => {
    if (!server) return;
    await server.unsafe(`drop database if exists ${name} with (force)`);
    await server.close();
  });

  storeContract("postgres", async () => {
    // Each test starts from empty tables (and a fresh batch sequence); the schema stays.
    const raw = new SQL(dbUrl, { max: 1 });
    try {
      await raw`truncate functions, versions, invocations, invocation_batches, schedules restart identity`;
    } finally {
      await raw.close();
    }
    const store = await openPgStore(dbUrl);
    return { store, close: () => store.close() };
  });

  describe("particular to Postgres", () => {
    test("two nodes (two stores) deploying one function at once get distinct, consecutive numbers", async () => {
      const [a, b] = await Promise.all([openPgStore(dbUrl), openPgStore(dbUrl)]);
      try {
        await a.functions.ensure("twonodes", config("twonodes"));
        const v = (n: number) => ({ digest: `d${n}`, config: config("twonodes"), artifact: `a${n}`, image: null });
        const made = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).versions.create("twonodes", v(i))));
        expect(made.map((r) => r.version).sort((x, y) => x - y)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    test("configs are stored as jsonb objects, readable by SQL (not JSON text inside a jsonb string)", async () => {
      const store = await openPgStore(dbUrl);
      const raw = new SQL(dbUrl, { max: 1 });
      try {
        await store.functions.ensure("jsonb", config("jsonb", { env: { K: "v" } }));
        await store.versions.create("jsonb", { digest: "d", config: config("jsonb", { memoryMb: 64 }), artifact: "a", image: null });
        await store.versions.settle("jsonb", 1, { status: "ready", config: config("jsonb", { memoryMb: 96 }) });
        await store.versions.activate("jsonb", 1);
        const f = (await raw`select jsonb_typeof(config) as t, config->>'memoryMb' as m from functions where name = 'jsonb'`) as { t: string; m: string }[];
        expect(f).toEqual([{ t: "object", m: "96" }]);
        const v = (await raw`select jsonb_typeof(config) as t from versions where function = 'jsonb'`) as { t: string }[];
        expect(v).toEqual([{ t: "object" }]);
      } finally {
        await raw.close();
        await store.close();
      }
    });
  });
});
