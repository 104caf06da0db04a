/**
 * What do invocation records, metrics and function logs cost the warm path? Starts two
 * forges on the process driver (FORGE_TELEMETRY=on and off), deploys examples/hello on
 * each (one instance, concurrency 64) and measures both with wrk, alternating rounds after
 * a warm-up. Prints requests/s, CPU per request of each forge, and the ratio on / off.
 *
 *   bun src/bench/telemetry-cost.ts [-c 64] [-d 5s] [--rounds 3]
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { parseDuration } from "../config.ts";

const ROOT = resolve(import.meta.dir, "../..");
const MAIN = join(ROOT, "src/cli/main.ts");

interface Forge {
  url: string;
  port: number;
  key: string;
  proc: ReturnType<typeof Bun.spawn>;
  dir: string;
}

async function startForge(telemetry: "on" | "off"): Promise<Forge> {
  const dir = mkdtempSync(join(tmpdir(), `forge-telemetry-${telemetry}-`));
  const proc = Bun.spawn([process.execPath, MAIN, "up", "--port", "0"], {
    env: { PATH: process.env.PATH ?? "", FORGE_DATA_DIR: dir, FORGE_DRIVER: "process", FORGE_STEM_CELLS: "0", FORGE_TELEMETRY: telemetry, NO_COLOR: "1" },
    stdout: "pipe",
    stderr: "ignore",
  });
  let out = "";
  const dec = new TextDecoder();
  for await (const chunk of proc.stdout as unknown as AsyncIterable<Uint8Array>) {
    out += dec.decode(chunk);
    if (/API key[^:]*: \S+/.test(out)) break;
  }
  const url = /forge listening on (http:\/\/\S+)/.exec(out)?.[1];
  const key = /API key[^:]*: (\S+)/.exec(out)?.[1];
  if (!url || !key) throw new Error(`forge did not start:\n${out}`);
  const deploy = Bun.spawnSync([process.execPath, MAIN, "deploy", join(ROOT, "examples/hello"), "--concurrency", "64"], {
    env: { PATH: process.env.PATH ?? "", FORGE_URL: url, FORGE_API_KEY: key },
  });
  if (deploy.exitCode !== 0) throw new Error(`deploy failed: ${deploy.stderr.toString()}`);
  return { url, port: Number(new URL(url).port), key, proc, dir };
}

function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10_000; // utime + stime, in clock ticks of 10 ms
}

function wrk(f: Forge, concurrency: number, seconds: number): { rps: number; cpuUsPerReq: number } {
  const before = cpuMicros(f.proc.pid);
  const r = Bun.spawnSync(["wrk", "-t1", `-c${concurrency}`, `-d${seconds}s`, "-H", `Host: hello.localhost:${f.port}`, `${f.url}/?name=x`]);
  const text = r.stdout.toString();
  const requests = Number(/(\d+) requests in/.exec(text)?.[1] ?? NaN);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? NaN);
  return { rps, cpuUsPerReq: (cpuMicros(f.proc.pid) - before) / requests };
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { c: { type: "string", default: "64" }, d: { type: "string", default: "5s" }, rounds: { type: "string", default: "3" } } });
  const concurrency = Number(values.c);
  const seconds = Math.max(1, Math.round((parseDuration(values.d) ?? 5000) / 1000));
  const rounds = Number(values.rounds);
  if (!Bun.which("wrk")) {
    process.stderr.write("wrk is not installed (apt-get install wrk)\n");
    return 1;
  }
  const on = await startForge("on");
  const off = await startForge("off");
  try {
    wrk(on, concurrency, 2); // warm-up: JIT and instance
    wrk(off, concurrency, 2);
    const results = { on: [] as { rps: number; cpuUsPerReq: number }[], off: [] as { rps: number; cpuUsPerReq: number }[] };
    for (let i = 0; i < rounds; i++) {
      results.on.push(wrk(on, concurrency, seconds));
      results.off.push(wrk(off, concurrency, seconds));
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
    const onRps = median(results.on.map((r) => r.rps));
    const offRps = median(results.off.map((r) => r.rps));
    const onCpu = median(results.on.map((r) => r.cpuUsPerReq));
    const offCpu = median(results.off.map((r) => r.cpuUsPerReq));
    console.log(`telemetry on : ${onRps.toFixed(0)} req/s, ${onCpu.toFixed(1)} us CPU per request (median of ${rounds} x ${seconds}s, wrk -c${concurrency})`);
    console.log(`telemetry off: ${offRps.toFixed(0)} req/s, ${offCpu.toFixed(1)} us CPU per request`);
    console.log(`ratio on/off: throughput ${(onRps / offRps).toFixed(3)}, CPU per request ${(onCpu / offCpu).toFixed(3)}`);
    return 0;
  } finally {
    for (const f of [on, off]) {
      f.proc.kill("SIGTERM");
      await f.proc.exited;
      rmSync(f.dir, { recursive: true, force: true });
    }
  }
}

process.exit(await main());
