/**
 * Several nodes on the docker driver (issue 15): a node that lacks a version's artifact and
 * image fetches the artifact from Postgres by digest and builds the image on its own engine.
 * Both nodes share this machine's engine, so the image is removed before the second node
 * starts: it can only serve by building it itself.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, startForge, tempDir, until } from "./_helpers.ts";
import { testCluster, type TestCluster } from "./_cluster.ts";
import { requireDocker, requireServices } from "./_services.ts";

const services = requireServices("redisUrl", "pgUrl");
const engine = await requireDocker();

describe.skipIf(!services || !engine)("several nodes on the docker driver", () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await testCluster(services as { pgUrl: string; redisUrl: string }, "docker");
  });

  afterAll(async () => {
    await cluster?.[Symbol.asyncDispose]();
  });

  test("a node that never saw the deploy fetches the artifact by digest and builds the image on its engine, then serves from a stem cell", async () => {
    using fns = tempDir("forge-cluster-docker-fns-");
    const env = cluster.env({ FORGE_DRIVER: "docker" });
    const name = `dgreet${randomBytes(3).toString("hex")}`;
    await using a = await startForge({ env });
    const dir = join(fns, name);
    mkdirSync(join(dir, "data"), { recursive: true });
    writeFileSync(join(dir, "index.ts"), `export default { fetch: async () => new Response(await Bun.file(import.meta.dir + "/data/word.txt").text()) };`);
    writeFileSync(join(dir, "data/word.txt"), "from the artifact");
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ name }));
    const d = await cli(a, ["deploy", dir]);
    if (d.code !== 0) throw new Error(`deploy failed:\n${d.stdout}\n${d.stderr}`);
    expect(await (await a.fn(name, "/")).text()).toBe("from the artifact");

    // The image gone from the engine (A's running instance keeps its layers): B must build it.
    const image = `forge/fn-${name}:v1`;
    await engine?.docker.getImage(image).remove({ force: true });
    expect(await engine?.docker.getImage(image).inspect().then(() => true, () => false)).toBe(false);
    await using b = await startForge({ env });
    await until(async () => ((await (await fetch(`${b.url}/readyz`)).json()) as { stemCellsByRuntime: { bun?: number } }).stemCellsByRuntime.bun === 1, 60_000, "a stem cell on B");
    const res = await b.fn(name, "/");
    expect(res.status).toBe(200);
    expect(await res.text()).toBe("from the artifact");
    expect(await engine?.docker.getImage(image).inspect().then(() => true, () => false)).toBe(true);
    const local = (await (await b.api(`/v1/functions/${name}?local=1`)).json()) as { pool: { instances: { origin: string }[] } };
    expect(local.pool.instances.map((i) => i.origin)).toEqual(["cell"]);
    await cli(a, ["delete", name]);
  }, 120_000);
});
