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

  describe("what several nodes share", () => {
    test("an artifact is stored once by digest and read back byte for byte; an unreferenced one is kept through its grace period", async () => {
      const store = await openPgStore(dbUrl);
      try {
        const bytes = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7) & 0xff);
        expect(await store.shared.hasArtifact("digest-a")).toBe(false);
        expect(await store.shared.getArtifact("digest-a")).toBeUndefined();
        await Promise.all([store.shared.putArtifact("digest-a", bytes), store.shared.putArtifact("digest-a", bytes)]);
        expect(await store.shared.hasArtifact("digest-a")).toBe(true);
        expect(Buffer.compare(Buffer.from((await store.shared.getArtifact("digest-a")) as Uint8Array), Buffer.from(bytes))).toBe(0);
        // just written: no version refers to it yet (a deploy stores it first), and it stays
        expect(await store.shared.pruneArtifacts()).toBe(0);
        expect(await store.shared.hasArtifact("digest-a")).toBe(true);
      } finally {
        await store.close();
      }
    });

    test("an old artifact a deploy just found by digest is not pruned before its version refers to it", async () => {
      const store = await openPgStore(dbUrl);
      const raw = new SQL(dbUrl, { max: 1 });
      try {
        await store.shared.putArtifact("digest-old", new Uint8Array([1, 2, 3]));
        // Stored long ago for a function since deleted: nothing refers to it, its grace is over.
        await raw`update artifacts set created_at = ${Date.now() - 2 * 60 * 60_000} where digest = 'digest-old'`;
        await store.shared.putArtifact("digest-gone", new Uint8Array([4]));
        await raw`update artifacts set created_at = ${Date.now() - 2 * 60 * 60_000} where digest = 'digest-gone'`;
        // The same code deployed again: the deploy finds it (so does not store it again)...
        expect(await store.shared.hasArtifact("digest-old")).toBe(true);
        // ...and a prune on any node before the version row exists keeps it.
        expect(await store.shared.pruneArtifacts()).toBe(1);
        expect(await store.shared.hasArtifact("digest-old")).toBe(true);
        expect(await store.shared.hasArtifact("digest-gone")).toBe(false);
      } finally {
        await raw.close();
        await store.close();
      }
    });

    test("a setting's first writer wins, whichever node writes it", async () => {
      const [a, b] = await Promise.all([openPgStore(dbUrl), openPgStore(dbUrl)]);
      try {
        const key = `k-${crypto.randomUUID()}`;
        const got = await Promise.all([a.shared.setting(key, "from-a"), b.shared.setting(key, "from-b")]);
        expect(got[0]).toBe(got[1]);
        expect(["from-a", "from-b"]).toContain(got[0]);
        expect(await a.shared.setting(key, "later")).toBe(got[0]);
      } finally {
        await Promise.all([a.close(), b.close()]);
      }
    });

    test("nodes register with a heartbeat, are listed while it is fresh, and go when removed", async () => {
      const store = await openPgStore(dbUrl);
      try {
        const node = (id: string, at: number) => ({ id, url: `http://127.0.0.1:${id.length}`, driver: "process", version: "0.1.0", startedAt: 1000, heartbeatAt: at });
        await store.shared.heartbeat(node("n-old", 5_000));
        await store.shared.heartbeat(node("n-new", 5_000));
        await store.shared.heartbeat(node("n-new", 9_000));
        expect((await store.shared.nodes(8_000)).map((n) => n.id)).toEqual(["n-new"]);
        expect((await store.shared.nodes(0)).map((n) => [n.id, n.heartbeatAt])).toEqual([["n-new", 9_000], ["n-old", 5_000]]);
        await store.shared.removeNode("n-new");
        expect((await store.shared.nodes(0)).map((n) => n.id)).toEqual(["n-old"]);
      } finally {
        await store.close();
      }
    });
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
