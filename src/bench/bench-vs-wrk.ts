/**
 * Does `forge bench` agree with wrk? Sets up the suite's warm scenarios as the suite does
 * (a forge on a driver, default docker, in this process; the suite's benchmark function
 * pinned to one instance; nginx with kept-alive upstream connections to that instance's
 * socket), then measures the warm throughput of both proxies, warm-gateway and warm-nginx,
 * with forge's load generator (on a thread of its own, as the suite runs it) and with wrk
 * -t1, at the same concurrency and duration, alternating tool and scenario each round after
 * a warm-up of both. Prints per scenario the medians of each tool and the ratio forge bench /
 * wrk: the median of each round's ratio, the two runs of a round being next to each other in
 * time, leaving out rounds another process disturbed (each round's is printed, to show the
 * spread). warm-direct is left out: wrk cannot load
 * a Unix socket.
 *
 *   bun src/bench/bench-vs-wrk.ts [--driver docker|process] [--forge in-process|child] [-c 16] [-d 5s] [--rounds 3]
 *
 * --forge child runs forge in a process of its own (as gateway-vs-nginx.ts does), so that
 * neither tool shares a process with it.
 *
 * The machine is shared: before each run the script waits (up to 15 s) for it to be quiet,
 * and it reports the share of the CPU that other processes (neither this one and its
 * children, nor the function's instance) used during each run.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { createConsola } from "consola";
import { ForgeClient } from "../cli/client.ts";
import { loadConfig, parseDuration } from "../config.ts";
import { connectDocker } from "../pool/index.ts";
import { cpuMicros, median, startForgeChild } from "./_forge-process.ts";
import { waitForQuiet, withOthersLoad } from "./_machine-load.ts";
import { parseWrk } from "./generator-vs-wrk.ts";
import { formatUs, runLoadInWorker } from "./load.ts";
import { machineInfo } from "./report.ts";
import { deployFunction, type BenchTarget } from "./scenarios/_shared.ts";
import { GATEWAY, instanceSocket, NGINX, startNginx } from "./scenarios/warm.ts";
import { inProcess } from "./suite.ts";

interface Figures {
  rps: number;
  p50Us: number;
  /** CPU of the load tool, microseconds per request. */
  toolCpuUs: number;
  /** CPU of the proxy measured (forge, or nginx's worker), microseconds per request; NaN where the generator shares its process. */
  proxyCpuUs: number;
  /** Share of the machine's CPU that other processes used during the run (0-1). */
  others: number;
}

interface Scenario {
  name: string;
  url: string;
  host?: string;
  /** CPU time of the proxy's process so far, microseconds. */
  proxyCpu(): number;
  /** Is forge bench's thread inside that process (forge in-process)? Its proxy CPU is not told apart then. */
  sharesProcess: boolean;
}

const USAGE = "usage: bun src/bench/bench-vs-wrk.ts [--driver docker|process] [--forge in-process|child] [-c 16] [-d 5s] [--rounds 3]\n";
/** A round in which other processes used more than this share of the machine is not a fair pair. */
const BUSY_ROUND = 0.1;
/** Warm-up of each forge bench run, in its fresh worker thread (the JIT of the generator). */
const BENCH_WARMUP_MS = 1000;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      driver: { type: "string", default: "docker" },
      forge: { type: "string", default: "in-process" },
      c: { type: "string", default: "16" },
      d: { type: "string", default: "5s" },
      rounds: { type: "string", default: "3" },
    },
  });
  const driver = String(values.driver);
  const where = String(values.forge);
  const concurrency = Number(values.c);
  const seconds = Math.round((parseDuration(String(values.d)) ?? Number.NaN) / 1000);
  const rounds = Number(values.rounds);
  if ((driver !== "docker" && driver !== "process") || (where !== "in-process" && where !== "child") || !Number.isInteger(concurrency) || concurrency < 1 || !(seconds >= 1) || !Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write(USAGE);
    return 1;
  }
  for (const tool of ["wrk", "nginx"]) {
    if (!Bun.which(tool)) {
      process.stderr.write(`${tool} is not installed (apt-get install ${tool})\n`);
      return 1;
    }
  }

  const dir = mkdtempSync(join(tmpdir(), "forge-bench-vs-wrk-"));
  let stopForge = async (): Promise<void> => {};
  try {
    let target: BenchTarget;
    let forgeCpu: () => number;
    if (where === "in-process") {
      const forge = await inProcess(loadConfig(), driver, { bun: 1, node: 0 }, createConsola({ level: 1, stdout: process.stderr, stderr: process.stderr }));
      target = forge.target;
      forgeCpu = () => cpuMicros(process.pid);
      stopForge = async () => {
        await forge[Symbol.asyncDispose]();
      };
    } else {
      const forge = await startForgeChild({ FORGE_DATA_DIR: join(dir, "data"), FORGE_DRIVER: driver });
      target = { url: forge.url, client: new ForgeClient(forge.url, forge.key) };
      forgeCpu = () => cpuMicros(forge.proc.pid);
      stopForge = async () => {
        forge.proc.kill("SIGTERM");
        await forge.proc.exited;
      };
    }
    const fn = await deployFunction(target, "bench-vs-wrk", { minWarm: 1, maxInstances: 1, concurrency });
    const socket = await instanceSocket(target, fn.name);
    if (!socket) throw new Error("forge does not report the instance's socket");
    await using nginx = await startNginx(join(dir, "nginx"), socket, concurrency);
    const nginxWorker = Number(Bun.spawnSync(["pgrep", "-P", String(nginx.pid)]).stdout.toString().trim().split("\n")[0]);
    const scenarios: Scenario[] = [
      { name: GATEWAY.name, url: `${target.url}/`, host: fn.host, proxyCpu: forgeCpu, sharesProcess: where === "in-process" },
      { name: NGINX.name, url: `http://127.0.0.1:${nginx.port}/`, proxyCpu: () => cpuMicros(nginxWorker), sharesProcess: false },
    ];

    // The processes whose CPU is the benchmark's: this one (forge in-process, the generator's
    // thread, nginx, wrk, a forge child) and the function's instance (a container is no child of ours).
    const roots = [process.pid, ...(driver === "docker" ? await containerPids(socket) : [])];
    const measure = async (run: () => Promise<Omit<Figures, "others">>): Promise<Figures> => {
      const idle = await waitForQuiet(0.8, 500, 15_000);
      if (idle < 0.8) process.stderr.write(`  the machine stayed busy (${Math.round(idle * 100)}% idle): measuring anyway\n`);
      const { result, others } = await withOthersLoad(roots, run);
      return { ...result, others };
    };
    const bench = async (s: Scenario, secs: number): Promise<Omit<Figures, "others">> => {
      const proxy0 = s.proxyCpu();
      const r = await runLoadInWorker({ url: s.url, concurrency, durationMs: secs * 1000, warmupMs: BENCH_WARMUP_MS, ...(s.host ? { headers: { host: s.host } } : {}) });
      // The proxy's counter runs through the warm-up too: per request of both.
      const proxyUs = s.proxyCpu() - proxy0;
      if (r.errors.total) throw new Error(`forge bench saw ${r.errors.total} errors on ${s.name}: ${JSON.stringify(r.errors.samples)}`);
      return { rps: r.rps, p50Us: r.latency.percentile(50), toolCpuUs: r.cpuUs / r.requests, proxyCpuUs: s.sharesProcess ? Number.NaN : proxyUs / (r.requests + r.warmupRequests) };
    };
    const wrk = async (s: Scenario, secs: number): Promise<Omit<Figures, "others">> => {
      const proxy0 = s.proxyCpu();
      const proc = Bun.spawn(["wrk", "-t1", `-c${concurrency}`, `-d${secs}s`, "--latency", ...(s.host ? ["-H", `Host: ${s.host}`] : []), s.url], { stdout: "pipe", stderr: "pipe" });
      const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
      const proxyUs = s.proxyCpu() - proxy0;
      if (code !== 0) throw new Error(`wrk exited with ${code}`);
      if (/Non-2xx|Socket errors/.test(out)) throw new Error(`wrk saw errors on ${s.name}:\n${out}`);
      const f = parseWrk(out);
      const requests = Number(/(\d+) requests in/.exec(out)?.[1] ?? f.rps * secs);
      return { rps: f.rps, p50Us: f.p50Us, toolCpuUs: Number(proc.resourceUsage()?.cpuTime.total ?? 0n) / requests, proxyCpuUs: proxyUs / requests };
    };

    process.stderr.write(`warming up: gateway, instance and nginx, 2s of each tool on each ...\n`);
    for (const s of scenarios) {
      await wrk(s, 2);
      await bench(s, 2);
    }
    const ours = new Map<string, Figures[]>(scenarios.map((s) => [s.name, []]));
    const theirs = new Map<string, Figures[]>(scenarios.map((s) => [s.name, []]));
    for (let i = 0; i < rounds; i++) {
      process.stderr.write(`round ${i + 1}/${rounds}: ${scenarios.map((s) => s.name).join(", ")}; wrk and forge bench, ${seconds}s each at c=${concurrency}\n`);
      for (const s of scenarios) {
        // Which tool goes first alternates, so that neither always meets the machine warmer.
        if (i % 2 === 0) {
          theirs.get(s.name)?.push(await measure(() => wrk(s, seconds)));
          ours.get(s.name)?.push(await measure(() => bench(s, seconds)));
        } else {
          ours.get(s.name)?.push(await measure(() => bench(s, seconds)));
          theirs.get(s.name)?.push(await measure(() => wrk(s, seconds)));
        }
      }
    }
    process.stdout.write(formatTable({ driver, where, concurrency, seconds, rounds }, scenarios, ours, theirs) + "\n");
    return 0;
  } finally {
    await stopForge();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- internal ---

function formatTable(
  run: { driver: string; where: string; concurrency: number; seconds: number; rounds: number },
  scenarios: Scenario[],
  ours: Map<string, Figures[]>,
  theirs: Map<string, Figures[]>,
): string {
  // A round in which another process took more than a tenth of the machine (marked *) hit
  // one tool's run and maybe not the other's: the figures leave such rounds out while at
  // least half the rounds of the scenario are quiet.
  const kept = new Map<string, { ours: Figures[]; theirs: Figures[]; busy: boolean[]; all: boolean }>();
  for (const s of scenarios) {
    const a = ours.get(s.name) ?? [];
    const b = theirs.get(s.name) ?? [];
    const busy = a.map((x, i) => Math.max(x.others, b[i]?.others ?? 0) > BUSY_ROUND);
    const quiet = busy.filter((x) => !x).length;
    const all = quiet * 2 < busy.length;
    const keep = (_: Figures, i: number): boolean => all || !busy[i];
    kept.set(s.name, { ours: a.filter(keep), theirs: b.filter(keep), busy, all });
  }
  const m = machineInfo();
  const med = (xs: Figures[] | undefined, k: keyof Figures): number => median((xs ?? []).map((x) => x[k]));
  const rows: string[][] = [["scenario", "tool", "req/s", "p50", "tool CPU/req", "proxy CPU/req", "others' CPU"]];
  for (const s of scenarios) {
    const k = kept.get(s.name);
    for (const [tool, xs] of [["wrk -t1", k?.theirs], ["forge bench", k?.ours]] as const) {
      rows.push([s.name, tool, Math.round(med(xs, "rps")).toLocaleString("en-US"), formatUs(med(xs, "p50Us")), `${med(xs, "toolCpuUs").toFixed(1)} us`, Number.isNaN(med(xs, "proxyCpuUs")) ? "-" : `${med(xs, "proxyCpuUs").toFixed(1)} us`, `${Math.round(med(xs, "others") * 100)}%`]);
    }
  }
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
  const lines = [
    `machine: ${m.cpus} x ${m.cpuModel}, ${m.os}, bun ${m.bun}; driver ${run.driver}, forge ${run.where}; c=${run.concurrency}, ${run.seconds}s x ${run.rounds} alternating rounds after a warm-up; medians, leaving out the rounds other processes disturbed (*) while at least half are quiet`,
    ...rows.map((r) => r.map((c, i) => (i < 2 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join("  ")),
    "",
  ];
  // Each round's two runs are a pair, next to each other in time: their ratio leaves out
  // what drifts between rounds on a shared machine, and the median of the rounds' ratios is the figure.
  for (const s of scenarios) {
    const k = kept.get(s.name);
    const a = ours.get(s.name) ?? [];
    const b = theirs.get(s.name) ?? [];
    const each = a.map((x, i) => x.rps / (b[i]?.rps ?? Number.NaN));
    const use = each.filter((_, i) => k?.all || !k?.busy[i]);
    const marks = each.map((r, i) => `${r.toFixed(2)}${k?.busy[i] ? "*" : ""}`).join(" ");
    lines.push(`${s.name}: forge bench / wrk = ${median(use).toFixed(2)}, the median of ${use.length === each.length ? "all" : `the ${use.length} quiet`} rounds' (${marks})`);
  }
  const [gw, ng] = scenarios;
  if (gw && ng) {
    const ratio = (tool: "ours" | "theirs"): string => (med(kept.get(gw.name)?.[tool], "rps") / med(kept.get(ng.name)?.[tool], "rps")).toFixed(2);
    lines.push(`${gw.name} / ${ng.name}: ${ratio("ours")} by forge bench, ${ratio("theirs")} by wrk`);
  }
  lines.push(`others' CPU: the share of the machine (both cores) other processes used during a run; * marks a round where it passed ${BUSY_ROUND * 100}%`);
  return lines.join("\n");
}

/** The pids of the containers that mount the instance's folder (the one holding its socket). */
async function containerPids(socket: string): Promise<number[]> {
  const docker = connectDocker(loadConfig().dockerHost);
  const containers = await docker.listContainers({ filters: { volume: [dirname(socket)] } });
  const pids = await Promise.all(containers.map(async (c) => (await docker.getContainer(c.Id).inspect()).State.Pid));
  if (pids.length === 0) process.stderr.write(`no container mounts ${dirname(socket)}: the instance's CPU counts as others'\n`);
  return pids.filter((p) => p > 0);
}

if (import.meta.main) process.exit(await main());
