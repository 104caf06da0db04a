/** The broker's validation and the binding resolver, in process on the memory store. */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { isForgeError } from "../errors.ts";
import { createMemoryJobStore } from "./job-store.ts";
import { createMemoryQueue } from "./memory-queue.ts";
import { ProvisionService } from "./service.ts";
import type { ProvisionMessage } from "./worker.ts";

function setup() {
  const store = createMemoryJobStore({ ttlMs: 60_000 });
  const queue = createMemoryQueue<ProvisionMessage>();
  const service = new ProvisionService({ store, queue, backends: ["docker"], defaultBackend: "docker", logger: createConsola({ level: -999 }) });
  return { store, queue, service };
}

async function rejection(p: Promise<unknown>): Promise<{ status: number; code: string; hint: string | undefined }> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!isForgeError(err)) throw new Error(`expected a ForgeError, got ${String(err)}`);
  return { status: err.status, code: err.code, hint: err.hint };
}

async function ready(s: ReturnType<typeof setup>, name: string, port: number): Promise<string> {
  const job = await s.service.create({ service_name: name });
  const conn = { host: "127.0.0.1", port, username: `u_${name.replaceAll("-", "_")}`, password: `pw-${name}`, database: `app_${name.replaceAll("-", "_")}` };
  await s.store.transition(job.id, ["pending"], { status: "ready", connection: conn, url: `postgres://${conn.username}:${conn.password}@127.0.0.1:${port}/${conn.database}` });
  return job.id;
}

describe("provision service", () => {
  test("every bad create body is a 400 with a hint", async () => {
    const s = setup();
    const bad: unknown[] = [
      null,
      [],
      "checkout",
      {},
      { service_name: 42 },
      { service_name: "" },
      { service_name: "Checkout" },
      { service_name: "9lives" },
      { service_name: "a".repeat(64) },
      { service_name: "has_underscore" },
      { service_name: "ok", resource: "mysql" },
      { service_name: "ok", resource: 1 },
      { service_name: "ok", backend: "k8s" },
      { service_name: "ok", backend: "shared" }, // not configured here
      { service_name: "ok", extra: true },
    ];
    for (const body of bad) {
      const r = await rejection(s.service.create(body));
      expect(r.status).toBe(400);
      expect(r.hint).toBeTruthy();
    }
    expect(await s.queue.depth()).toBe(0);
  });

  test("resource defaults to postgres, backend to the server's", async () => {
    const s = setup();
    const job = await s.service.create({ service_name: "a-b-1" });
    expect(job).toMatchObject({ service_name: "a-b-1", resource: "postgres", backend: "docker", status: "pending", attempts: 0 });
    expect(await s.queue.depth()).toBe(1);
  });

  test("bad list queries and unknown ids", async () => {
    const s = setup();
    for (const q of [{ limit: "0" }, { limit: "101" }, { limit: "ten" }, { limit: "-1" }, { cursor: "../etc" }]) {
      expect((await rejection(s.service.list(q))).status).toBe(400);
    }
    expect((await rejection(s.service.get("0000000000000000"))).status).toBe(404);
    expect((await rejection(s.service.get("not-an-id"))).status).toBe(404);
    expect((await rejection(s.service.delete("0000000000000000"))).status).toBe(404);
  });

  test("a binding gives DATABASE_URL and PG* of the first database and <NAME>_DATABASE_URL of each", async () => {
    const s = setup();
    await ready(s, "checkout", 5001);
    await ready(s, "user-db", 5002);
    const env = await s.service.bindings(["checkout", "user-db"]);
    expect(env).toEqual({
      DATABASE_URL: "postgres://u_checkout:pw-checkout@127.0.0.1:5001/app_checkout",
      PGHOST: "127.0.0.1",
      PGPORT: "5001",
      PGUSER: "u_checkout",
      PGPASSWORD: "pw-checkout",
      PGDATABASE: "app_checkout",
      CHECKOUT_DATABASE_URL: "postgres://u_checkout:pw-checkout@127.0.0.1:5001/app_checkout",
      USER_DB_DATABASE_URL: "postgres://u_user_db:pw-user-db@127.0.0.1:5002/app_user_db",
    });
  });

  test("the newest ready database of a name is bound; deleted ones are not", async () => {
    const s = setup();
    const old = await ready(s, "shop", 6001);
    await ready(s, "shop", 6002);
    expect((await s.service.bindings(["shop"])).PGPORT).toBe("6002");
    const newest = (await s.service.list()).jobs[0]?.id ?? "";
    await s.service.delete(newest);
    expect((await s.service.bindings(["shop"])).PGPORT).toBe("6001");
    await s.service.delete(old);
    expect((await rejection(s.service.bindings(["shop"]))).code).toBe("database_not_found");
  });

  test("an unknown or not-ready database fails the binding with a 400 and a hint", async () => {
    const s = setup();
    const unknown = await rejection(s.service.bindings(["nope"]));
    expect(unknown).toMatchObject({ status: 400, code: "database_not_found" });
    expect(unknown.hint).toContain("forge db create nope");
    const job = await s.service.create({ service_name: "later" });
    const pending = await rejection(s.service.bindings(["later"]));
    expect(pending).toMatchObject({ status: 400, code: "database_not_ready" });
    expect(pending.hint).toContain(`forge db status ${job.id}`);
  });
});
