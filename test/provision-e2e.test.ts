/**
 * The provisioner end to end against a real `forge up` (in-process queue), real Docker and a
 * real Postgres: both backends from POST to ready to a working login to DELETE and gone,
 * DELETE in the middle of a provision, bad input, and examples/todo-db bound with --db.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { SQL } from "bun";
import type Dockerode from "dockerode";
import { startForge, cli, ROOT, until, type ForgeProcess } from "./_helpers.ts";
import { requirePostgresImage, requireServices } from "./_services.ts";

interface Job {
  id: string;
  service_name: string;
  backend: string;
  status: string;
  attempts: number;
  detail?: string;
  connection?: { host: string; port: number; username: string; password: string; database: string };
  url?: string;
}

const services = requireServices("pgUrl");
const pg = services ? await requirePostgresImage() : undefined;

describe.skipIf(!services || !pg)("provisioner end to end", () => {
  let forge: ForgeProcess;
  let docker: Dockerode;
  let admin: SQL;
  const made: string[] = [];

  beforeAll(async () => {
    if (!services || !pg) return;
    docker = pg.docker;
    admin = new SQL(services.pgUrl, { max: 1 });
    forge = await startForge({ env: { FORGE_PG_ADMIN_URL: services.pgUrl, FORGE_POSTGRES_IMAGE: pg.image, FORGE_STEM_CELLS: "0" } });
  }, 300_000);

  afterAll(async () => {
    await forge?.[Symbol.asyncDispose]();
    // Whatever a failed test left behind.
    for (const id of made) {
      await docker?.getContainer(`forge-pg-${id}`).remove({ force: true, v: true }).catch(() => {});
      await docker?.getVolume(`forge-pg-${id}`).remove().catch(() => {});
    }
    await admin?.close();
  });

  async function post(body: unknown): Promise<Response> {
    return forge.api("/v1/provision", { method: "POST", headers: { "content-type": "application/json" }, body: typeof body === "string" ? body : JSON.stringify(body) });
  }
  async function job(id: string): Promise<Job> {
    return (await (await forge.api(`/v1/provision/${id}`)).json()) as Job;
  }
  async function waitStatus(id: string, status: string, timeoutMs = 90_000): Promise<Job> {
    return until(async () => {
      const j = await job(id);
      if (j.status === "failed" && status !== "failed") throw new Error(`job ${id} failed: ${j.detail}`);
      return j.status === status ? j : undefined;
    }, timeoutMs, `job ${id} ${status}`);
  }
  async function create(service: string, backend: "docker" | "shared"): Promise<Job> {
    const res = await post({ service_name: service, resource: "postgres", backend });
    expect(res.status).toBe(202);
    const j = (await res.json()) as Job;
    made.push(j.id);
    expect(res.headers.get("location")).toBe(`/v1/provision/${j.id}`);
    expect(j).toMatchObject({ service_name: service, backend, status: "pending" });
    return j;
  }
  async function selectOne(url: string): Promise<number> {
    const sql = new SQL(url, { max: 1, connectionTimeout: 5 });
    try {
      const [row] = await sql`select 1 as one`;
      return Number((row as { one: unknown }).one);
    } finally {
      await sql.close();
    }
  }
  async function containerExists(id: string): Promise<boolean> {
    return docker
      .getContainer(`forge-pg-${id}`)
      .inspect()
      .then(
        () => true,
        () => false,
      );
  }

  test("docker: POST -> ready -> select 1 -> DELETE -> deleted, container and volume gone", async () => {
    const j = await create("checkout", "docker");
    const ready = await waitStatus(j.id, "ready");
    expect(ready.connection).toMatchObject({ host: "127.0.0.1", database: "app_checkout" });
    expect(ready.url).toBe(
      `postgres://${ready.connection?.username}:${ready.connection?.password}@127.0.0.1:${ready.connection?.port}/app_checkout`,
    );
    expect(await selectOne(ready.url ?? "")).toBe(1);

    const info = await docker.getContainer(`forge-pg-${j.id}`).inspect();
    expect(info.Config.Labels).toMatchObject({ "dev.forge.managed": "true", "dev.forge.role": "database", "dev.forge.job": j.id });
    expect(info.HostConfig.CapDrop).toEqual(["ALL"]);
    expect(info.HostConfig.ReadonlyRootfs).toBe(true);
    expect(info.HostConfig.SecurityOpt).toContain("no-new-privileges");
    const bindings = info.HostConfig.PortBindings as Record<string, { HostIp: string }[]>;
    expect(bindings["5432/tcp"]?.[0]?.HostIp).toBe("127.0.0.1");

    const del = await forge.api(`/v1/provision/${j.id}`, { method: "DELETE" });
    expect(del.status).toBe(202);
    expect(((await del.json()) as Job).status).toBe("deleting");
    const gone = await waitStatus(j.id, "deleted");
    expect(gone.connection).toBeUndefined();
    expect(await containerExists(j.id)).toBe(false);
    expect(await docker.getVolume(`forge-pg-${j.id}`).inspect().then(() => true, () => false)).toBe(false);
    // Idempotent: a deleted job answers 200 and stays deleted.
    const again = await forge.api(`/v1/provision/${j.id}`, { method: "DELETE" });
    expect(again.status).toBe(200);
    expect(((await again.json()) as Job).status).toBe("deleted");
    // Passwords never reach forge's own log.
    expect(forge.output()).not.toContain(ready.connection?.password ?? "-");
  }, 120_000);

  test("shared: POST -> ready -> select 1 -> DELETE -> deleted, database and role gone", async () => {
    const j = await create("orders", "shared");
    const ready = await waitStatus(j.id, "ready", 30_000);
    const c = ready.connection;
    expect(c?.database).toBe(`app_orders_${j.id}`);
    expect(c?.username).toBe(`forge_${j.id}`);
    expect(await selectOne(ready.url ?? "")).toBe(1);
    // Other roles may not connect to it.
    const [acl] = await admin`select datacl::text as acl from pg_database where datname = ${c?.database ?? ""}`;
    expect(String((acl as { acl: string }).acl)).not.toMatch(/(^|[{,])=/);

    expect((await forge.api(`/v1/provision/${j.id}`, { method: "DELETE" })).status).toBe(202);
    await waitStatus(j.id, "deleted", 30_000);
    expect(await admin`select 1 from pg_database where datname = ${c?.database ?? ""}`).toHaveLength(0);
    expect(await admin`select 1 from pg_roles where rolname = ${c?.username ?? ""}`).toHaveLength(0);
    expect(forge.output()).not.toContain(c?.password ?? "-");
  }, 60_000);

  test("a DELETE while the container starts ends deleted with no container left", async () => {
    const j = await create("racy", "docker");
    // Wait until the worker made the container and Postgres is not up yet.
    await until(async () => (await job(j.id)).status === "provisioning" && (await containerExists(j.id)), 30_000, "the container");
    expect((await job(j.id)).status).toBe("provisioning");
    const del = await forge.api(`/v1/provision/${j.id}`, { method: "DELETE" });
    expect(del.status).toBe(202);
    await waitStatus(j.id, "deleted");
    await until(async () => !(await containerExists(j.id)), 30_000, "the container to go");
    // It stays deleted: the provision in flight must not bring it back as ready.
    const final = await job(j.id);
    expect(final.status).toBe("deleted");
    expect(await containerExists(j.id)).toBe(false);
  }, 120_000);

  test("lists newest first, page by page", async () => {
    const a = await create("page-a", "shared");
    const b = await create("page-b", "shared");
    const first = (await (await forge.api("/v1/provision?limit=1")).json()) as { jobs: Job[]; next_cursor: string | null };
    expect(first.jobs.map((j) => j.id)).toEqual([b.id]);
    expect(first.next_cursor).toBe(b.id);
    const second = (await (await forge.api(`/v1/provision?limit=1&cursor=${first.next_cursor}`)).json()) as { jobs: Job[] };
    expect(second.jobs.map((j) => j.id)).toEqual([a.id]);
    for (const j of [a, b]) {
      await waitStatus(j.id, "ready", 30_000);
      await forge.api(`/v1/provision/${j.id}`, { method: "DELETE" });
      await waitStatus(j.id, "deleted", 30_000);
    }
  }, 60_000);

  test("every bad input gets a 4xx with a hint", async () => {
    const cases: [string, Promise<Response>, number][] = [
      ["malformed JSON", post("{not json"), 400],
      ["empty body", post(""), 400],
      ["an array", post("[]"), 400],
      ["no service_name", post({ resource: "postgres" }), 400],
      ["service_name not a DNS label", post({ service_name: "Bad_Name!" }), 400],
      ["service_name too long", post({ service_name: "a".repeat(64) }), 400],
      ["service_name a number", post({ service_name: 7 }), 400],
      ["another resource", post({ service_name: "x", resource: "mysql" }), 400],
      ["unknown backend", post({ service_name: "x", backend: "k8s" }), 400],
      ["unknown field", post({ service_name: "x", size: "xl" }), 400],
      ["limit 0", forge.api("/v1/provision?limit=0"), 400],
      ["limit not a number", forge.api("/v1/provision?limit=lots"), 400],
      ["bad cursor", forge.api("/v1/provision?cursor=..%2F.."), 400],
      ["unknown job", forge.api("/v1/provision/0000000000000000"), 404],
      ["unknown job delete", forge.api("/v1/provision/0000000000000000", { method: "DELETE" }), 404],
      ["no key", fetch(`${forge.url}/v1/provision`), 401],
    ];
    for (const [what, pending, status] of cases) {
      const res = await pending;
      expect({ what, status: res.status }).toEqual({ what, status });
      const body = (await res.json()) as { error: { code: string; message: string; hint?: string } };
      expect({ what, hint: Boolean(body.error.hint) }).toEqual({ what, hint: true });
    }
    const list = (await (await forge.api("/v1/provision?limit=100")).json()) as { jobs: Job[] };
    expect(list.jobs.filter((j) => j.service_name === "x")).toHaveLength(0);
  });

  test("examples/todo-db deployed with --db writes and reads its bound database", async () => {
    const db = await cli(forge, ["db", "create", "todo-store", "--backend", "shared", "--json"]);
    expect(db.code).toBe(0);
    const dbJob = JSON.parse(db.stdout) as Job;
    made.push(dbJob.id);
    expect(dbJob.status).toBe("ready");

    const refused = await cli(forge, ["deploy", join(ROOT, "examples/todo-db"), "--db", "no-such-db"]);
    expect(refused.code).toBe(1);
    expect(refused.stdout + refused.stderr).toContain("forge db create no-such-db");

    const d = await cli(forge, ["deploy", join(ROOT, "examples/todo-db"), "--db", "todo-store"]);
    expect(d.code).toBe(0);
    const add = await forge.fn("todo-db", "/", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ title: "buy milk" }) });
    expect(add.status).toBe(201);
    const listed = (await (await forge.fn("todo-db", "/")).json()) as { todos: { title: string; done: boolean }[] };
    expect(listed.todos).toEqual([expect.objectContaining({ title: "buy milk", done: false })]);
    expect((await forge.fn("todo-db", "/", { method: "POST", body: "{}" })).status).toBe(400);
    // The row is in the bound database itself.
    const direct = new SQL(dbJob.url ?? "", { max: 1 });
    try {
      expect(await direct`select title from todos`).toEqual([{ title: "buy milk" }]);
    } finally {
      await direct.close();
    }
    expect((await cli(forge, ["delete", "todo-db"])).code).toBe(0);
    const del = await cli(forge, ["db", "delete", dbJob.id, "--json"]);
    expect(del.code).toBe(0);
    expect((JSON.parse(del.stdout) as Job).status).toBe("deleted");
  }, 60_000);

  test("forge db list and status show the jobs; status of an unknown id fails with a hint", async () => {
    const list = await cli(forge, ["db", "list"]);
    expect(list.code).toBe(0);
    expect(list.stdout).toContain("SERVICE");
    const unknown = await cli(forge, ["db", "status", "0000000000000000"]);
    expect(unknown.code).toBe(1);
    expect(unknown.stdout + unknown.stderr).toContain("forge db list");
  });
});

test("forge worker without FORGE_REDIS_URL refuses to start, with a hint", async () => {
  const r = await cli(undefined, ["worker"], { FORGE_REDIS_URL: "" });
  expect(r.code).toBe(1);
  expect(r.stdout + r.stderr).toContain("FORGE_REDIS_URL");
  expect(r.stdout + r.stderr).toContain("hint");
});
