/**
 * Is the load generator the bottleneck? Runs a trivial Bun server in its own process
 * (port 0) and measures it with wrk (one thread, like our one-thread generator) and with
 * runLoad at the same concurrency and duration, alternating, after a warm-up of both.
 * Prints requests/s and latency of each and the ratio ours / wrk.
 *
 *   bun src/bench/generator-vs-wrk.ts [-c 64] [-d 5s] [--rounds 3]
 */
import { parseArgs } from "node:util";
import { parseDuration } from "../config.ts";
import { formatUs, runLoad } from "./load.ts";
import { machineInfo } from "./report.ts";

interface Figures {
  rps: number;
  p50Us: number;
  p99Us: number;
  /** CPU time of the tool per request, microseconds: its cost, less sensitive to a busy machine than req/s. */
  cpuUsPerReq: number;
  /** CPU time / wall time of the tool: near 1.0 means that one thread was saturated. */
  busy: number;
}

const SERVER = `const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("ok") }); console.log(s.port);`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { c: { type: "string", default: "64" }, d: { type: "string", default: "5s" }, rounds: { type: "string", default: "3" } },
  });
  const concurrency = Number(values.c);
  const durationMs = parseDuration(values.d) ?? Number.NaN;
  const rounds = Number(values.rounds);
  if (!Number.isInteger(concurrency) || concurrency < 1 || !(durationMs > 0) || !Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write("usage: bun src/bench/generator-vs-wrk.ts [-c 64] [-d 5s] [--rounds 3]\n");
    return 1;
  }
  const wrk = Bun.which("wrk");
  if (!wrk) {
    process.stderr.write("wrk is not installed (apt-get install wrk)\n");
    return 1;
  }

  const server = Bun.spawn([process.execPath, "-e", SERVER], { stdout: "pipe", stderr: "inherit" });
  try {
    const port = Number((await readLine(server.stdout)).trim());
    if (!Number.isInteger(port) || port <= 0) throw new Error("the server did not report its port");
    const url = `http://127.0.0.1:${port}/`;

    const ours = async (ms: number): Promise<Figures> => {
      const cpu0 = process.cpuUsage();
      const r = await runLoad({ url, concurrency, durationMs: ms });
      const cpu = process.cpuUsage(cpu0);
      if (r.errors.total) throw new Error(`our generator saw ${r.errors.total} errors`);
      const cpuUs = cpu.user + cpu.system;
      return { rps: r.rps, p50Us: r.latency.percentile(50), p99Us: r.latency.percentile(99), cpuUsPerReq: cpuUs / r.requests, busy: cpuUs / 1000 / r.durationMs };
    };
    const theirs = async (ms: number): Promise<Figures> => {
      const seconds = Math.max(1, Math.round(ms / 1000));
      const proc = Bun.spawn([wrk, "-t1", `-c${concurrency}`, `-d${seconds}s`, "--latency", url], { stdout: "pipe", stderr: "pipe" });
      const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
      if (code !== 0) throw new Error(`wrk exited with ${code}`);
      const f = parseWrk(out);
      const cpuUs = Number(proc.resourceUsage()?.cpuTime.total ?? 0n);
      return { ...f, cpuUsPerReq: cpuUs / (f.rps * seconds), busy: cpuUs / 1e6 / seconds };
    };

    process.stderr.write(`warming up (server, JIT) ...\n`);
    await ours(1000);
    await theirs(1000);
    const a: Figures[] = [];
    const b: Figures[] = [];
    for (let i = 0; i < rounds; i++) {
      process.stderr.write(`round ${i + 1}/${rounds}: wrk, then forge's generator, ${durationMs / 1000}s each at c=${concurrency}\n`);
      b.push(await theirs(durationMs));
      a.push(await ours(durationMs));
    }
    const med = (xs: Figures[], k: keyof Figures): number => median(xs.map((x) => x[k]));
    const m = machineInfo();
    const ratio = med(a, "rps") / med(b, "rps");
    const lines = [
      `machine: ${m.cpus} x ${m.cpuModel}, ${m.os}, bun ${m.bun}; trivial Bun server in its own process; c=${concurrency}, ${durationMs / 1000}s x ${rounds} rounds, medians`,
      `  wrk -t1                 ${Math.round(med(b, "rps")).toLocaleString("en-US").padStart(9)} req/s   p50 ${formatUs(med(b, "p50Us"))}   p99 ${formatUs(med(b, "p99Us"))}   cpu ${med(b, "cpuUsPerReq").toFixed(1)} us/req, ${Math.round(med(b, "busy") * 100)}% of a core`,
      `  forge bench (1 thread)  ${Math.round(med(a, "rps")).toLocaleString("en-US").padStart(9)} req/s   p50 ${formatUs(med(a, "p50Us"))}   p99 ${formatUs(med(a, "p99Us"))}   cpu ${med(a, "cpuUsPerReq").toFixed(1)} us/req, ${Math.round(med(a, "busy") * 100)}% of a core`,
      `  ratio forge bench / wrk: ${ratio.toFixed(2)} (requests/s); cpu per request ${(med(a, "cpuUsPerReq") / med(b, "cpuUsPerReq")).toFixed(2)}x wrk's`,
    ];
    process.stdout.write(lines.join("\n") + "\n");
    return 0;
  } finally {
    server.kill();
    await server.exited;
  }
}

/** Requests/sec and the 50 % / 99 % lines of `wrk --latency`. */
export function parseWrk(out: string): Pick<Figures, "rps" | "p50Us" | "p99Us"> {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const lat = (p: string): number => {
    const m = new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s)\\s*$`, "m").exec(out);
    if (!m) return Number.NaN;
    const v = Number(m[1]);
    return m[2] === "us" ? v : m[2] === "ms" ? v * 1000 : v * 1_000_000;
  };
  if (!Number.isFinite(rps)) throw new Error(`cannot read wrk's output:\n${out}`);
  return { rps, p50Us: lat("50"), p99Us: lat("99") };
}

function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? 0) : ((s[mid - 1] ?? 0) + (s[mid] ?? 0)) / 2;
}

async function readLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.getReader();
  const dec = new TextDecoder();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
  }
  reader.releaseLock();
  return text.split("\n")[0] ?? "";
}

if (import.meta.main) process.exit(await main());
