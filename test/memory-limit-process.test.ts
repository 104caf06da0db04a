/**
 * memoryMb on the process driver (issue 14): a function that allocates past its limit is
 * stopped, the request on it is a 502 naming the limit, its log says so, and the next
 * request gets a fresh instance. As root (always so under CI) the limit is a memory cgroup
 * per instance, and the function's code runs inside it from its first line.
 */
import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, startForge, tempDir, until } from "./_helpers.ts";

const root = process.getuid?.() === 0;

/**
 * /grow (or ?grow on invoke) holds 1 MiB more every 2 ms until it is stopped, up to 2 GiB
 * (then it answers 200: the limit did not hold). Anything else answers what cgroup the
 * module was loaded in.
 */
const GROWER = `
import { readFileSync } from "node:fs";
const cgroupAtLoad = readFileSync("/proc/self/cgroup", "utf8");
const held: Buffer[] = [];
export default {
  async fetch(req: Request) {
    const url = new URL(req.url);
    if (url.pathname !== "/grow" && !url.searchParams.has("grow")) return Response.json({ cgroupAtLoad });
    while (held.length < 2048) {
      held.push(Buffer.alloc(1024 * 1024, 7));
      await new Promise((r) => setTimeout(r, 2));
    }
    return new Response("grew to 2 GiB and was not stopped");
  },
};
`;

interface ErrorBody {
  error: { code: string; message: string };
}

describe("memory limits on the process driver", () => {
  test("a function that allocates past its memoryMb gets a 502 naming the limit, its log says so, and the next request is served", async () => {
    using dir = tempDir("forge-grow-");
    writeFileSync(join(dir, "index.ts"), GROWER);
    await using forge = await startForge();
    if (root) expect(forge.output()).toMatch(/memory limits: cgroup v[12]/);
    const deployed = await cli(forge, ["deploy", dir, "--name", "grower", "--memory", "64"]);
    expect(deployed.stderr).toBe("");
    expect(deployed.code).toBe(0);

    const loaded = (await (await forge.fn("grower", "/")).json()) as { cgroupAtLoad: string };
    // The module's first line already ran under the instance's cgroup: forge/<owner>/<id>.
    if (root) expect(loaded.cgroupAtLoad).toMatch(/:memory:\/forge\/[0-9a-f]{16}\/[0-9a-f]+\n|^0::\/forge\/[0-9a-f]{16}\/[0-9a-f]+\n/m);

    // The fast path (a request by subdomain).
    const grown = await forge.fn("grower", "/grow");
    const text = await grown.text();
    expect(grown.status).toBe(502);
    expect((JSON.parse(text) as ErrorBody).error.message).toBe("the instance of grower went over its memory limit of 64 MiB and was stopped");
    await until(async () => (await cli(forge, ["logs", "grower"])).stdout.includes("forge: instance stopped: it went over its memory limit of 64 MiB"), 10_000, "the log line");
    const next = await forge.fn("grower", "/");
    expect(next.status).toBe(200);

    // The Request path (forge invoke, through the control API).
    const invoked = await forge.api("/v1/functions/grower/invoke?grow=1", { method: "POST", body: "{}" });
    expect(invoked.status).toBe(502);
    expect(((await invoked.json()) as ErrorBody).error.message).toContain("memory limit of 64 MiB");
    expect((await forge.fn("grower", "/")).status).toBe(200);
  });

  test("a node function that fills V8's heap (sized from memoryMb) gets the same 502 naming the limit, and the next request is served", async () => {
    using dir = tempDir("forge-heap-");
    // JS arrays live on V8's heap: a cold node instance's heap limit is 3/4 of memoryMb, so
    // V8 gives up ("JavaScript heap out of memory") before the kernel's limit is reached.
    writeFileSync(
      join(dir, "index.mjs"),
      `const held = [];
       export default { async fetch(req) {
         if (new URL(req.url).pathname !== "/grow") return new Response("ok");
         while (held.length < 4096) { held.push(new Array(128 * 1024).fill(held.length + 0.5)); await new Promise((r) => setImmediate(r)); }
         return new Response("grew and was not stopped");
       } };`,
    );
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ runtime: "node", memoryMb: 96 }));
    // No node cell: the instance is a cold start, whose heap follows memoryMb.
    await using forge = await startForge({ env: { FORGE_STEM_CELLS: "bun=1" } });
    expect((await cli(forge, ["deploy", dir, "--name", "heapfill"])).code).toBe(0);
    const grown = await forge.fn("heapfill", "/grow");
    expect(grown.status).toBe(502);
    expect(((await grown.json()) as ErrorBody).error.message).toBe("the instance of heapfill went over its memory limit of 96 MiB and was stopped");
    expect(await (await forge.fn("heapfill", "/")).text()).toBe("ok");
  });
});
