/**
 * On the process driver, with forge running as root, each instance runs as a uid of its
 * own: a function cannot read forge's database or key, list the data dir, or read another
 * function's folder.
 */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, startForge, tempDir } from "./_helpers.ts";

const root = process.getuid?.() === 0;

describe.skipIf(!root)("process driver isolation (forge as root)", () => {
  test("a function cannot read forge's files or another function's folder", async () => {
    using dir = tempDir("forge-iso-");
    await using forge = await startForge();
    writeFileSync(
      join(dir, "index.ts"),
      `import { readFileSync, readdirSync } from "node:fs";
       const attempt = (f: () => unknown) => { try { f(); return "read"; } catch (e) { return (e as { code?: string }).code ?? "error"; } };
       export default { fetch(req: Request) {
         const data = process.env.DATA_DIR ?? "";
         const other = new URL(req.url).searchParams.get("other") ?? "";
         return Response.json({
           uid: process.getuid?.(),
           db: attempt(() => readFileSync(data + "/forge.db")),
           key: attempt(() => readFileSync(data + "/api-key")),
           list: attempt(() => readdirSync(data)),
           instances: attempt(() => readdirSync(data + "/instances")),
           functions: attempt(() => readdirSync(data + "/functions")),
           other: other ? attempt(() => readdirSync(data + "/instances/" + other)) : "none",
         });
       } };`,
    );
    for (const name of ["probe-a", "probe-b"]) {
      const d = await cli(forge, ["deploy", dir, "--name", name, "--env", `DATA_DIR=${forge.dataDir}`]);
      expect(d.code).toBe(0);
    }
    await (await forge.fn("probe-b", "/")).text();
    const info = JSON.parse((await cli(forge, ["info", "probe-b", "--json"])).stdout) as { pool: { instances: { id: string }[] } };
    const otherId = info.pool.instances[0]?.id ?? "";
    const seen = (await (await forge.fn("probe-a", `/?other=${otherId}`)).json()) as Record<string, unknown>;
    expect(seen.uid).toBeGreaterThanOrEqual(200_000);
    expect(seen).toMatchObject({ db: "EACCES", key: "EACCES", list: "EACCES", instances: "EACCES", functions: "EACCES", other: "EACCES" });
  });
});
