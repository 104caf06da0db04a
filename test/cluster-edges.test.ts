/**
 * Edges of several nodes (issue 15), with real processes on one Postgres and one Redis:
 * `forge logs --follow` through one node follows every peer's live lines, and a client that
 * goes away leaves nothing open on any node; a PATCH through a node right after a deploy
 * through another lands on the new version everywhere.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { testCluster, type TestCluster } from "./_cluster.ts";
import { requireServices } from "./_services.ts";

const services = requireServices("redisUrl", "pgUrl");

const SOURCE = `
export default {
  async fetch(req: Request): Promise<Response> {
    console.log("hello from " + (new URL(req.url).searchParams.get("who") ?? "?"));
    return new Response((process.env.V ?? "-") + " " + (globalThis as { __v?: string }).__v);
  },
};
`;

/** Connected Unix sockets bound to `path` on this machine (the accepted ends of a server). */
function connectionsTo(path: string): number {
  return readFileSync("/proc/net/unix", "utf8")
    .split("\n")
    .filter((line) => line.trim().endsWith(" " + path) && line.trim().split(/\s+/)[5] === "03").length;
}

describe.skipIf(!services)("several nodes, at their edges", () => {
  const fns = tempDir("forge-follow-fns-");
  let cluster: TestCluster;
  let a: ForgeProcess;
  let b: ForgeProcess;

  const node = (): Promise<ForgeProcess> => startForge({ env: cluster.env() });

  beforeAll(async () => {
    cluster = await testCluster(services as { pgUrl: string; redisUrl: string }, "follow");
    a = await node();
    b = await node();
  }, 60_000);

  afterAll(async () => {
    try {
      await Promise.all([a?.[Symbol.asyncDispose](), b?.[Symbol.asyncDispose]()]);
      await cluster?.[Symbol.asyncDispose]();
    } finally {
      fns[Symbol.dispose]();
    }
  });

  test("a follow through A gets B's new lines; when the client goes, B's stream to A is gone too", async () => {
    const dir = join(fns, "tail");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "index.ts"), SOURCE);
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ name: "tail" }));
    expect((await cli(a, ["deploy", dir])).code).toBe(0);
    await until(async () => (await b.fn("tail", "/?who=warm").catch(() => undefined))?.status === 200, 10_000, "B serving tail");
    const bSock = join(b.dataDir, "api.sock");
    const before = connectionsTo(bSock);

    const t0 = performance.now();
    const client = new AbortController();
    const res = await a.api("/v1/functions/tail/logs?follow=1&since=1ms", { signal: client.signal });
    expect(res.status).toBe(200);
    let got = "";
    const reading = (async () => {
      const dec = new TextDecoder();
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) got += dec.decode(chunk);
    })().catch(() => {});
    // The head came at once (a peer gives up on a follow without one after 2 s)...
    expect(performance.now() - t0).toBeLessThan(2000);
    // ...and A follows B.
    await until(() => connectionsTo(bSock) === before + 1, 5000, "A following B");
    expect((await b.fn("tail", "/?who=b-live")).status).toBe(200);
    expect((await a.fn("tail", "/?who=a-live")).status).toBe(200);
    await until(() => got.includes("hello from b-live") && got.includes("hello from a-live"), 10_000, "both nodes' live lines through A");

    client.abort();
    await reading;
    await until(() => connectionsTo(bSock) === before, 10_000, "A's follow of B closed");
  }, 60_000);

  test("a PATCH of env through B just after a deploy through A: both nodes serve the new version with the new env", async () => {
    const dir = join(fns, "quick");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ name: "quick" }));
    const code = (n: number) => SOURCE.replace("export default", `(globalThis as { __v?: string }).__v = "v${n}";\nexport default`);
    writeFileSync(join(dir, "index.ts"), code(1));
    expect((await cli(a, ["deploy", dir])).code).toBe(0);
    await until(async () => (await (await b.fn("quick", "/").catch(() => undefined))?.text()) === "- v1", 10_000, "v1 on B");
    writeFileSync(join(dir, "index.ts"), code(2));
    expect((await cli(a, ["deploy", dir])).code).toBe(0);
    // At once, before B may have heard of v2.
    const patched = await b.api("/v1/functions/quick", { method: "PATCH", body: JSON.stringify({ env: { V: "patched" } }), headers: { "content-type": "application/json" } });
    expect(patched.status).toBe(200);
    for (const n of [a, b]) await until(async () => (await (await n.fn("quick", "/").catch(() => undefined))?.text()) === "patched v2", 10_000, `v2 with the new env on ${n === a ? "A" : "B"}`);
  }, 60_000);
});
