/**
 * A database bound to a function on the docker driver: the instance has no network of its
 * own, so it joins the database's internal network and reaches it by container name.
 * examples/todo-db writes and reads it; a shared-backend binding is refused with a hint.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { cli, ROOT, startForge, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker, requirePostgresImage } from "./_services.ts";

const engine = await requireDocker();
const pg = engine ? await requirePostgresImage() : undefined;

describe.skipIf(!engine || !pg)("database bindings on the docker driver", () => {
  let forge: ForgeProcess;
  let jobId = "";

  beforeAll(async () => {
    if (!pg) return;
    // A short keep-alive: the function goes back to no instance, so its next request is a first one again.
    forge = await startForge({ env: { FORGE_DRIVER: "docker", FORGE_POSTGRES_IMAGE: pg.image, FORGE_STEM_CELLS: "bun=1", FORGE_KEEP_ALIVE: "1s" } });
  }, 120_000);

  afterAll(async () => {
    if (!forge) return;
    await cli(forge, ["delete", "todo-db"]);
    if (jobId) await cli(forge, ["db", "delete", jobId]);
    await forge[Symbol.asyncDispose]();
    if (jobId) {
      await pg?.docker.getContainer(`forge-pg-${jobId}`).remove({ force: true, v: true }).catch(() => {});
      await pg?.docker.getNetwork(`forge-db-${jobId}`).remove().catch(() => {});
    }
  });

  test("examples/todo-db on docker reaches its docker-backend database over the database's network", async () => {
    const db = await cli(forge, ["db", "create", "todos-docker", "--backend", "docker", "--json"]);
    expect(db.code).toBe(0);
    const job = JSON.parse(db.stdout) as { id: string; status: string };
    jobId = job.id;
    expect(job.status).toBe("ready");

    const d = await cli(forge, ["deploy", join(ROOT, "examples/todo-db"), "--db", "todos-docker"]);
    expect(d.stdout + d.stderr).toContain("Your function is live");
    const add = await forge.fn("todo-db", "/", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ title: "from a container" }) });
    expect(add.status).toBe(201);
    const listed = (await (await forge.fn("todo-db", "/")).json()) as { todos: { title: string }[] };
    expect(listed.todos.map((t) => t.title)).toEqual(["from a container"]);

    // The network is internal: it reaches the database, not the outside.
    const net = await pg?.docker.getNetwork(`forge-db-${jobId}`).inspect();
    expect(net?.Internal).toBe(true);
  }, 120_000);

  test("its first request is served by a stem cell already on the database's network", async () => {
    const instances = async () => ((await (await forge.api("/v1/functions/todo-db")).json()) as { pool: { instances: unknown[] } | null }).pool?.instances.length ?? 0;
    await until(async () => (await instances()) === 0, 20_000, "the idle instance to retire");
    // One bun cell on the default networks, and one kept for todo-db's networks (egress + the database's).
    await until(async () => (((await (await forge.api("/readyz")).json()) as { stemCellsByRuntime: { bun?: number } }).stemCellsByRuntime.bun ?? 0) >= 2, 60_000, "a cell on todo-db's networks");
    const r = await forge.fn("todo-db", "/");
    expect(r.headers.get("x-forge-start")).toBe("cell");
    expect(((await r.json()) as { todos: { title: string }[] }).todos.map((t) => t.title)).toEqual(["from a container"]);
  }, 120_000);
});
