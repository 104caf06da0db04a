/**
 * A stem cell's container is named forge-cell-<runtime>-<id>; once the pool specializes it
 * for a function it takes that function's name, forge-fn-<name>-v<N>-<id> (DESIGN §7), so
 * `docker ps` says what it serves. The rename is off the request's path. Skipped without an
 * engine, failed under CI.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker } from "./_services.ts";

const engine = await requireDocker();

if (!engine) {
  test.skip("docker cell rename (no Docker engine)", () => {});
} else {
  const { docker } = engine;
  const data = tempDir("forge-rename-docker-");
  const fnDir = tempDir("forge-rename-fn-");
  let forge: ForgeProcess;

  /** Containers of this forge (their instance folder lies in its data dir), running or not. */
  const containers = async () =>
    (await docker.listContainers({ all: true, filters: { label: ["dev.forge.managed=true"] } })).filter((c) =>
      (c.Labels?.["dev.forge.dir"] ?? "").startsWith(`${data}/`),
    );

  beforeAll(async () => {
    forge = await startForge({ dataDir: data, env: { FORGE_DRIVER: "docker", FORGE_STEM_CELLS: "1" } });
    // A container's hostname is its id's first 12 characters: the answer says which container served it.
    writeFileSync(join(fnDir, "index.ts"), `import { hostname } from "node:os";\nexport default { fetch: () => Response.json({ host: hostname() }) };`);
    writeFileSync(join(fnDir, "forge.json"), JSON.stringify({ name: "renamed" }));
  });
  afterAll(async () => {
    try {
      if (forge) {
        await cli(forge, ["delete", "renamed"]);
        await forge.stop();
      }
      for (const c of await containers()) await docker.getContainer(c.Id).remove({ force: true }).catch(() => {});
    } finally {
      data[Symbol.dispose]();
      fnDir[Symbol.dispose]();
    }
  });

  describe("a specialized stem cell on the docker driver", () => {
    test("its container takes the function's name, forge-fn-<name>-v<N>-<id>, and the cell that replaces it keeps a cell's name", async () => {
      await until(async () => (await containers()).some((c) => c.State === "running" && c.Labels?.["dev.forge.role"] === "cell" && c.Labels["dev.forge.runtime"] === "bun"), 30_000, "a bun stem cell");
      const d = await cli(forge, ["deploy", fnDir]);
      expect(d.code).toBe(0);
      const r = await forge.fn("renamed", "/");
      expect(r.status).toBe(200);
      expect(r.headers.get("x-forge-start")).toBe("warm");
      const { host } = (await r.json()) as { host: string };

      const served = await until(
        async () => (await containers()).find((c) => c.Id.startsWith(host) && c.Names?.[0] === `/forge-fn-renamed-v1-${c.Labels?.["dev.forge.instance"]}`),
        10_000,
        "the serving cell's container renamed",
      );
      // Still labelled a cell: a restarted forge removes it rather than adopting it, as before.
      expect(served.Labels?.["dev.forge.role"]).toBe("cell");
      // It goes on serving under its new name.
      expect((await forge.fn("renamed", "/")).status).toBe(200);

      // The refill is a plain stem cell, named as one.
      const refill = await until(
        async () => (await containers()).find((c) => c.Id !== served.Id && c.State === "running" && c.Labels?.["dev.forge.role"] === "cell" && c.Labels["dev.forge.runtime"] === "bun"),
        30_000,
        "a new stem cell",
      );
      expect(refill.Names?.[0]).toBe(`/forge-cell-${refill.Labels?.["dev.forge.runtime"]}-${refill.Labels?.["dev.forge.instance"]}`);
    }, 90_000);
  });
}
