/**
 * The histogram keep-alive and the measured memory budget on a real forge (process driver),
 * with time compressed (FORGE_POLICY_MINUTE=100ms: a bin is 100 ms): after ten regular idle
 * times the function is unloaded after each request and brought back ahead of the next;
 * forge info and /metrics show the windows, memory as counted, declared and measured, and
 * memory-time.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { join } from "node:path";
import { cli, ROOT, startForge, until, type ForgeProcess } from "./_helpers.ts";

let forge: ForgeProcess;

beforeAll(async () => {
  forge = await startForge({
    env: { FORGE_DRIVER: "process", FORGE_KEEP_ALIVE_POLICY: "histogram", FORGE_POLICY_MINUTE: "100ms", FORGE_KEEP_ALIVE: "3s", FORGE_STEM_CELLS: "bun=1", FORGE_MEMORY_BUDGET_MB: "1024" },
  });
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
});

interface Info {
  keepAlive: { policy: string; source: string; prewarmMs: number; keepAliveMs: number; samples: number; prewarms: number };
  memory: { budgetMb: number; countedMb: number; declaredMb: number; residentMb?: number; accounting: string };
  pool: { instances: { state: string; countedMb: number; residentMb?: number; memoryMb: number }[] };
}

async function info(name = "hello"): Promise<Info> {
  const r = await cli(forge, ["info", name, "--json"]);
  if (r.code !== 0) throw new Error(`forge info failed: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout) as Info;
}

/** Traffic at a steady pace: the request at `at` (ms since the epoch), not before (the idle time is what is measured). */
async function requestAt(at: number, name = "hello"): Promise<string> {
  await until(() => Date.now() >= at, 5_000, "the next request's time");
  const r = await forge.fn(name, "/?name=pace");
  expect(r.status).toBe(200);
  await r.arrayBuffer();
  return r.headers.get("x-forge-start") ?? "";
}

test("the budget counts measured memory; /metrics shows counted, declared, resident and memory-time", async () => {
  const d = await cli(forge, ["deploy", join(ROOT, "examples/hello")]);
  expect(d.code).toBe(0);
  // An instance measured: counted at resident + headroom, below its 128 MiB limit.
  expect(await requestAt(Date.now())).not.toBe("");
  const measured = await until(async () => {
    const i = await info();
    const inst = i.pool.instances.find((x) => x.state === "ready" && x.residentMb !== undefined);
    return inst && i.memory.residentMb !== undefined ? { i, inst } : undefined;
  }, 10_000, "an instance measured");
  expect(measured.inst.countedMb).toBeLessThan(measured.inst.memoryMb);
  expect(measured.inst.countedMb).toBeGreaterThanOrEqual(Math.ceil((measured.inst.residentMb ?? 0) + 16) - 1);
  expect(measured.i.memory.accounting).toBe("measured");
  const metrics = await (await fetch(`${forge.url}/metrics`, { headers: { authorization: `Bearer ${forge.apiKey}` } })).text();
  const value = (re: RegExp): number => Number(re.exec(metrics)?.[1] ?? Number.NaN);
  expect(value(/^forge_memory_budget_bytes (\S+)$/m)).toBe(1024 * 1024 * 1024);
  expect(value(/^forge_memory_counted_bytes (\S+)$/m)).toBeGreaterThan(0);
  expect(value(/^forge_memory_declared_bytes (\S+)$/m)).toBeGreaterThan(0);
  expect(value(/^forge_memory_resident_bytes (\S+)$/m)).toBeGreaterThan(0);
  expect(value(/^forge_instance_memory_seconds_total\{function="hello"\} (\S+)$/m)).toBeGreaterThan(0);
  expect(value(/^forge_cell_memory_seconds_total (\S+)$/m)).toBeGreaterThan(0);
}, 30_000);

test("a regular function's windows are learned, shown, and used: unloaded after a request, back before the next", async () => {
  const d = await cli(forge, ["deploy", join(ROOT, "examples/hello"), "--name", "paced"]);
  expect(d.code).toBe(0);
  const before = await info("paced");
  expect(before.keepAlive).toMatchObject({ policy: "histogram", source: "fixed", keepAliveMs: 3000 });
  // Twelve requests, idle 250 ms and 650 ms in turn: bins 2 and 6 of 100 ms, so the window
  // an instance is brought back for is wide (180 to 770 ms) and a busy machine's sweep lands in it.
  let at = Date.now();
  for (let i = 0; i < 12; i++) {
    await requestAt(at, "paced");
    at = Date.now() + (i % 2 === 0 ? 250 : 650);
  }
  const learned = await info("paced");
  expect(learned.keepAlive.source).toBe("histogram");
  expect(learned.keepAlive.samples).toBeGreaterThanOrEqual(11);
  // p5 in bin 2, p99 in bin 6 (later ones on a busy machine): back after 180 ms (bin x 100 - 10%),
  // kept until 770 ms ((bin + 1) x 100 + 10%).
  const { prewarmMs, keepAliveMs } = learned.keepAlive;
  expect(prewarmMs % 90).toBe(0);
  expect(prewarmMs).toBeGreaterThanOrEqual(180);
  expect(keepAliveMs % 110).toBe(0);
  expect(keepAliveMs).toBeGreaterThan(prewarmMs);
  expect(keepAliveMs).toBeGreaterThanOrEqual(770);
  expect(keepAliveMs).toBeLessThanOrEqual(1320);
  const text = await cli(forge, ["info", "paced"]);
  expect(text.stdout).toMatch(/keep-alive histogram: unloaded after a request, back after \d+ms idle, kept until \d+ms \(from \d+ idle times, cv [\d.]+\)/);
  expect(text.stdout).toMatch(/memory on this node: \d+ of 1024 MiB counted \(measured \+ 16 MiB headroom\), \d+ MiB resident, \d+ MiB declared/);

  // One more request, then left idle: unloaded, one brought back (pre-warmed), unloaded past the window.
  const prewarms = (await info("paced")).keepAlive.prewarms;
  await requestAt(Date.now(), "paced");
  await until(async () => (await info("paced")).keepAlive.prewarms > prewarms, 10_000, "a pre-warm");
  await until(async () => (await info("paced")).pool.instances.length === 0, 10_000, "the pre-warmed instance unloaded past the window");
}, 60_000);
