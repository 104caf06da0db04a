/**
 * Several nodes on one machine (issue 15), measured from outside:
 *   1. from a deploy's answer (through node A) to the first 200 of the new version on every node;
 *   2. control-plane latency (deploy, list, info) of a node on Postgres against one on SQLite;
 *   3. warm throughput of one node against two behind nginx (wrk), and nginx's own share.
 *
 *   bun src/bench/cluster.ts [--pg postgres://...] [--redis redis://...] [--deploys 10] [-c 64] [-d 5s]
 *
 * --pg is a superuser URL (a fresh database is made and dropped), default FORGE_TEST_PG_URL;
 * --redis default FORGE_TEST_REDIS_URL. Process driver, so the figures are forge's own.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { SQL } from "bun";
import { packDir } from "../build/index.ts";
import { parseDuration } from "../config.ts";
import { freePort } from "./_docker-bench.ts";
import { median, startForgeChild, wrk } from "./_forge-process.ts";
import { nginxConfig } from "./_nginx.ts";

type Node = Awaited<ReturnType<typeof startForgeChild>>;

const SOURCE = `export default { fetch: () => Response.json({ v: process.env.V ?? "0" }) };`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      pg: { type: "string", default: process.env.FORGE_TEST_PG_URL ?? "" },
      redis: { type: "string", default: process.env.FORGE_TEST_REDIS_URL ?? "" },
      deploys: { type: "string", default: "10" },
      c: { type: "string", default: "64" },
      d: { type: "string", default: "5s" },
    },
  });
  if (!values.pg || !values.redis) {
    process.stderr.write("give --pg postgres://... (a superuser URL) and --redis redis://... (or FORGE_TEST_PG_URL / FORGE_TEST_REDIS_URL)\n");
    return 1;
  }
  for (const tool of ["wrk", "nginx"]) {
    if (!Bun.which(tool)) {
      process.stderr.write(`${tool} is not installed (apt-get install ${tool})\n`);
      return 1;
    }
  }
  const deploys = Number(values.deploys);
  const seconds = Math.max(1, Math.round((parseDuration(values.d) ?? 5000) / 1000));
  const dir = mkdtempSync(join(tmpdir(), "forge-cluster-bench-"));
  const dbName = `forge_bench_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = new SQL(values.pg);
  await admin.unsafe(`create database ${dbName}`);
  const db = new URL(values.pg);
  db.pathname = `/${dbName}`;
  const nodes: Node[] = [];
  let nginx: ReturnType<typeof Bun.spawn> | undefined;
  try {
    const cluster = { FORGE_DB: db.toString(), FORGE_REDIS_URL: values.redis, FORGE_REDIS_PREFIX: dbName, FORGE_DRIVER: "process", FORGE_STEM_CELLS: "bun=2,node=0", FORGE_RECONCILE: "1h" };
    const a = await startForgeChild({ ...cluster, FORGE_DATA_DIR: join(dir, "a") });
    const b = await startForgeChild({ ...cluster, FORGE_DATA_DIR: join(dir, "b"), FORGE_API_KEY: a.key });
    const solo = await startForgeChild({ FORGE_DATA_DIR: join(dir, "solo"), FORGE_DRIVER: "process", FORGE_STEM_CELLS: "bun=2,node=0" });
    nodes.push(a, b, solo);
    const archive = async (v: number): Promise<Uint8Array> => {
      const src = join(dir, `src-${v}`);
      mkdirSync(src, { recursive: true });
      writeFileSync(join(src, "index.ts"), SOURCE);
      writeFileSync(join(src, "forge.json"), JSON.stringify({ name: "bench", env: { V: String(v) }, concurrency: 256, maxInstances: 1 }));
      return packDir(src);
    };
    const api = (n: Node, path: string, init: RequestInit = {}): Promise<Response> =>
      fetch(`${n.url}${path}`, { ...init, headers: { authorization: `Bearer ${n.key}`, ...(init.headers as Record<string, string> | undefined) } });
    const deploy = async (n: Node, v: number): Promise<number> => {
      const body = await archive(v);
      const t = performance.now();
      const res = await api(n, "/v1/functions/bench/deploy", { method: "POST", body, headers: { "content-type": "application/gzip" } });
      const text = await res.text();
      if (!res.ok || text.includes('"error"')) throw new Error(`deploy failed: ${res.status} ${text}`);
      return performance.now() - t;
    };
    const serves = async (n: Node, v: number): Promise<boolean> => {
      const res = await fetch(`${n.url}/`, { headers: { host: `bench.localhost:${n.port}` } }).catch(() => undefined);
      return res?.status === 200 && ((await res.json()) as { v: string }).v === String(v);
    };

    // 1. deploy -> first 200 on every node
    const lag: Record<"A" | "B", number[]> = { A: [], B: [] };
    for (let v = 1; v <= deploys; v++) {
      await deploy(a, v);
      const answered = performance.now();
      await Promise.all(
        (["A", "B"] as const).map(async (name) => {
          const n = name === "A" ? a : b;
          while (!(await serves(n, v))) await Bun.sleep(1); // polling for the switch, 1 ms apart
          lag[name].push(performance.now() - answered);
        }),
      );
    }
    const fmt = (xs: number[]): string => `p50 ${median(xs).toFixed(1)} ms, max ${Math.max(...xs).toFixed(1)} ms`;
    console.log(`deploy answered (through A) -> first 200 of the new version, ${deploys} deploys:`);
    console.log(`  node A (took the deploy): ${fmt(lag.A)}`);
    console.log(`  node B (learns by notification): ${fmt(lag.B)}`);

    // 2. control plane on Postgres vs SQLite
    const time = async (n: number, f: () => Promise<unknown>): Promise<number[]> => {
      const out: number[] = [];
      for (let i = 0; i < n; i++) {
        const t = performance.now();
        await f();
        out.push(performance.now() - t);
      }
      return out;
    };
    console.log("control plane, p50 (Postgres node / SQLite node):");
    await deploy(solo, 1);
    let vs = 100;
    const dPg = await time(deploys, () => deploy(a, ++vs));
    const dSqlite = await time(deploys, () => deploy(solo, ++vs));
    console.log(`  deploy: ${median(dPg).toFixed(1)} ms / ${median(dSqlite).toFixed(1)} ms`);
    for (const [what, path] of [
      ["list", "/v1/functions"],
      ["info", "/v1/functions/bench"],
      ["versions", "/v1/functions/bench/versions"],
    ] as const) {
      const pg = await time(100, async () => (await api(a, path)).text());
      const lite = await time(100, async () => (await api(solo, path)).text());
      console.log(`  ${what}: ${median(pg).toFixed(2)} ms / ${median(lite).toFixed(2)} ms`);
    }

    // 3. warm throughput: one node, nginx -> one node, nginx -> two nodes
    await Promise.all([a, b].map(async (n) => void (await fetch(`${n.url}/`, { headers: { host: `bench.localhost:${n.port}` } })).text()));
    /** nginx (README's config, one worker) in front of `servers`; stopped by the caller. */
    const startNginx = async (name: string, servers: Node[]): Promise<{ url: string; proc: ReturnType<typeof Bun.spawn> }> => {
      const port = freePort();
      const conf = join(dir, name);
      mkdirSync(conf, { recursive: true });
      writeFileSync(join(conf, "nginx.conf"), nginxConfig(servers.map((n) => `127.0.0.1:${n.port}`), `127.0.0.1:${port}`, conf));
      const proc = Bun.spawn(["nginx", "-c", join(conf, "nginx.conf"), "-p", conf], { stdout: "ignore", stderr: "ignore" });
      while ((await fetch(`http://127.0.0.1:${port}/`, { headers: { host: "bench.localhost" } }).then((r) => r.status, () => 0)) !== 200) await Bun.sleep(20); // polling for nginx to listen
      return { url: `http://127.0.0.1:${port}/`, proc };
    };
    const one = await startNginx("nginx-one", [a]);
    const two = await startNginx("nginx-two", [a, b]);
    nginx = one.proc;
    const c = Number(values.c);
    const host = "bench.localhost";
    for (const url of [`${a.url}/`, one.url, two.url]) wrk(url, host, c, 1, a.proc.pid); // warm-up
    const direct = wrk(`${a.url}/`, host, c, seconds, a.proc.pid).rps;
    const viaOne = wrk(one.url, host, c, seconds, a.proc.pid).rps;
    const viaTwo = wrk(two.url, host, c, seconds, a.proc.pid).rps;
    one.proc.kill("SIGQUIT");
    two.proc.kill("SIGQUIT");
    await Promise.all([one.proc.exited, two.proc.exited]);
    nginx = undefined;
    console.log(`warm throughput, wrk -t1 -c${c} -d${seconds}s, everything on this machine's ${navigator.hardwareConcurrency} cores:`);
    console.log(`  one node, direct: ${direct.toFixed(0)} req/s`);
    console.log(`  one node behind nginx (1 worker): ${viaOne.toFixed(0)} req/s (${(viaOne / direct).toFixed(2)}x)`);
    console.log(`  two nodes behind nginx (1 worker): ${viaTwo.toFixed(0)} req/s (${(viaTwo / direct).toFixed(2)}x)`);
    return 0;
  } finally {
    nginx?.kill("SIGQUIT");
    await nginx?.exited;
    for (const n of nodes) n.proc.kill("SIGTERM");
    await Promise.all(nodes.map((n) => n.proc.exited));
    await admin.unsafe(`drop database if exists ${dbName} with (force)`);
    await admin.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exit(await main());
