/**
 * The warm pool end to end, one suite for the process and docker drivers: a deploy is
 * verified on a stem cell that then serves the first request warm; deploy and rollback under
 * load fail nothing; killing an instance under load fails only its in-flight requests.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

export interface WarmPoolOptions {
  driver: "process" | "docker";
  /** Kills the instance `id` (serving the process `pid`) from outside forge. */
  kill(forge: ForgeProcess, id: string, pid: number): Promise<void>;
}

export function warmPoolContract(o: WarmPoolOptions): void {
let forge: ForgeProcess;
const fnDir = tempDir("forge-warm-");

beforeAll(async () => {
  forge = await startForge({ env: { FORGE_STEM_CELLS: "2", FORGE_DRIVER: o.driver } });
  writeFileSync(
    join(fnDir, "index.ts"),
    `export default { async fetch(req: Request) {
       const url = new URL(req.url);
       if (url.pathname === "/slow") await Bun.sleep(Number(url.searchParams.get("ms") ?? 20));
       return Response.json({ pid: process.pid, v: process.env.V ?? "1" });
     } };`,
  );
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
  fnDir[Symbol.dispose]();
});

async function cellsReady(n: number): Promise<void> {
  // bun's own: a bare count is that many cells of every runtime, and node cells serve no bun function
  await until(async () => ((await (await fetch(`${forge.url}/readyz`)).json()) as { stemCellsByRuntime: { bun: number } }).stemCellsByRuntime.bun >= n, 15_000, `${n} bun stem cells`);
}

/** Runs `concurrency` closed loops of requests until `stop` resolves; returns the statuses seen. */
async function load(name: string, path: string, concurrency: number, stop: Promise<unknown>, statuses: number[] = []): Promise<number[]> {
  let done = false;
  void stop.then(() => (done = true));
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (!done) {
        try {
          const r = await forge.fn(name, path);
          await r.arrayBuffer();
          statuses.push(r.status);
        } catch {
          statuses.push(0);
        }
      }
    }),
  );
  return statuses;
}

describe(`warm pool on the ${o.driver} driver`, () => {
  test("a deploy verifies the version on a stem cell, which then serves the first request warm", async () => {
    await cellsReady(2);
    expect((await cli(forge, ["deploy", join(ROOT, "examples/hello")])).code).toBe(0);
    const before = JSON.parse((await cli(forge, ["info", "hello", "--json"])).stdout) as { pool: { instances: { origin: string }[] } };
    expect(before.pool.instances.map((i) => i.origin)).toEqual(["cell"]);
    const r = await forge.fn("hello", "/?name=first");
    expect(r.status).toBe(200);
    expect(r.headers.get("x-forge-start")).toBe("warm");
    // The cell taken by the deploy is replaced in the background.
    await cellsReady(2);
  });

  test("deploy and rollback while a load runs fail zero requests", async () => {
    expect((await cli(forge, ["deploy", fnDir, "--name", "steady"])).code).toBe(0);
    const { promise: stop, resolve } = Promise.withResolvers<void>();
    const running = load("steady", "/slow?ms=5", 8, stop);
    await until(async () => (await forge.fn("steady", "/")).status === 200, 5000, "steady serving");
    const d = await cli(forge, ["deploy", fnDir, "--name", "steady", "--env", "V=2"]);
    expect(d.code).toBe(0);
    await until(async () => ((await (await forge.fn("steady", "/")).json()) as { v: string }).v === "2", 5000, "v2 serving");
    const rb = await cli(forge, ["rollback", "steady"]);
    expect(rb.code).toBe(0);
    await until(async () => ((await (await forge.fn("steady", "/")).json()) as { v: string }).v === "1", 5000, "v1 serving again");
    resolve();
    const statuses = await running;
    expect(statuses.length).toBeGreaterThan(50);
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
  });

  test("killing an instance under load fails only its in-flight requests", async () => {
    expect((await cli(forge, ["deploy", fnDir, "--name", "victim", "--concurrency", "4"])).code).toBe(0);
    const { promise: stop, resolve } = Promise.withResolvers<void>();
    const seen: number[] = [];
    const running = load("victim", "/slow?ms=10", 8, stop, seen);
    // Two instances serve the load (8 loops / concurrency 4); kill one that is busy.
    const busy = await until(async () => {
      const info = JSON.parse((await cli(forge, ["info", "victim", "--json"])).stdout) as { pool: { instances: { id: string; inFlight: number; state: string }[] } };
      const ready = info.pool.instances.filter((i) => i.state === "ready");
      return ready.length >= 2 ? ready.find((i) => i.inFlight > 0) : undefined;
    }, 15_000, "two instances, one busy");
    const pid = ((await (await forge.fn("victim", "/")).json()) as { pid: number }).pid;
    await o.kill(forge, busy.id, pid);
    // The load goes on past the kill: 100 more requests after it.
    const atKill = seen.length;
    await until(() => seen.length >= atKill + 100, 15_000, "100 requests after the kill");
    resolve();
    const statuses = await running;
    const failed = statuses.filter((s) => s !== 200);
    // At most the killed instance's slots were in flight when it died.
    expect(failed.length).toBeLessThanOrEqual(4);
    expect(failed.every((s) => s === 502)).toBe(true);
  });
});
}
