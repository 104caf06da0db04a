/** Runtime "node" on the process driver (the suite is test/_node-runtime.case.ts), and a forge with no node. */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir } from "./_helpers.ts";
import { nodeRuntimeSuite } from "./_node-runtime.case.ts";

nodeRuntimeSuite("process");

describe("a forge with no node binary", () => {
  test("says so at start, keeps no node cell, and a node function's deploy fails with what to install", async () => {
    await using forge = await startForge({ env: { FORGE_NODE_BIN: "/nonexistent/node", FORGE_STEM_CELLS: "bun=1,node=1" } });
    expect(forge.output()).toContain("runtime node: unavailable (no /nonexistent/node found)");
    const ready = (await (await forge.api("/readyz")).json()) as { stemCellsByRuntime: Record<string, number> };
    expect(ready.stemCellsByRuntime.node).toBeUndefined();
    const r = await cli(forge, ["deploy", join(ROOT, "test/fixtures/node/workers"), "--name", "no-node"]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("no node binary");
    expect(r.stdout + r.stderr).toContain("FORGE_NODE_BIN");
    // bun functions are unaffected
    expect((await cli(forge, ["deploy", join(ROOT, "examples/hello"), "--name", "still-bun"])).code).toBe(0);
    expect((await forge.fn("still-bun", "/")).status).toBe(200);
  });
});

describe("a node module that throws at load, started cold (no node cell)", () => {
  test("the deploy's error carries the module's own message, not only node's stack frames", async () => {
    await using forge = await startForge({ env: { FORGE_STEM_CELLS: "bun=1" } });
    using dir = tempDir("forge-node-cold-broken-");
    writeFileSync(join(dir, "index.mjs"), 'throw new Error("no config at load");\nexport default { fetch: () => new Response("never") };\n');
    writeFileSync(join(dir, "forge.json"), '{ "runtime": "node" }');
    const r = await cli(forge, ["deploy", dir, "--name", "cold-broken"]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("no config at load");
    expect(r.stdout + r.stderr).not.toContain("node:internal");
  });
});
