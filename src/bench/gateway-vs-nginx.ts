/**
 * The warm path against the peer proxy: forge's gateway and nginx (one worker, keep-alive
 * upstream) in front of the same instance of examples/hello, measured with wrk from
 * outside both processes, in alternating rounds after a warm-up. Reports throughput and
 * CPU per request of each proxy, then the latency a proxy adds over a direct call to the
 * instance's Unix socket (sequential requests, p50). Last, the warm path end to end: forge
 * (gateway + instance) against nginx in front of a plain Bun server running the same module
 * on a Unix socket, which is what a user would set up by hand.
 *
 *   bun src/bench/gateway-vs-nginx.ts [--driver process|docker] [-c 64] [-d 5s] [--rounds 3]
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { parseDuration } from "../config.ts";
import { median, startForgeWithHello, wrk, type ForgeChild } from "./_forge-process.ts";
import { runLoad } from "./load.ts";

async function freePort(): Promise<number> {
  const s = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() });
  const port = s.port ?? 0;
  await s.stop(true);
  return port;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { driver: { type: "string", default: "process" }, c: { type: "string", default: "64" }, d: { type: "string", default: "5s" }, rounds: { type: "string", default: "3" } },
  });
  const c = Number(values.c);
  const seconds = Math.max(1, Math.round((parseDuration(values.d) ?? 5000) / 1000));
  const rounds = Number(values.rounds);
  for (const tool of ["wrk", "nginx"]) {
    if (!Bun.which(tool)) {
      process.stderr.write(`${tool} is not installed (apt-get install ${tool})\n`);
      return 1;
    }
  }
  const dir = mkdtempSync(join(tmpdir(), "forge-gw-"));
  let forge: ForgeChild | undefined;
  let nginx: ReturnType<typeof Bun.spawn> | undefined;
  let plain: ReturnType<typeof Bun.spawn> | undefined;
  try {
    // The same module as a plain Bun server on a Unix socket, for the end-to-end comparison.
    const plainSocket = join(dir, "plain.sock");
    plain = Bun.spawn(
      [process.execPath, "-e", `const m = await import(${JSON.stringify(join(import.meta.dir, "..", "..", "examples", "hello", "index.ts"))}); Bun.serve({ unix: ${JSON.stringify(plainSocket)}, fetch: m.default.fetch }); console.log("ready");`],
      { stdout: "pipe", stderr: "inherit" },
    );
    await (plain.stdout as ReadableStream<Uint8Array>).getReader().read(); // "ready"
    forge = await startForgeWithHello({ FORGE_DATA_DIR: join(dir, "data"), FORGE_DRIVER: String(values.driver) }, ["--concurrency", "256", "--max-instances", "1"]);
    const { url, key, host } = forge;
    await fetch(`${url}/?name=x`, { headers: { host } });
    const info = (await (await fetch(`${url}/v1/functions/hello`, { headers: { authorization: `Bearer ${key}` } })).json()) as {
      pool: { instances: { socketPath?: string }[] };
    };
    const socket = info.pool.instances[0]?.socketPath;
    if (!socket) throw new Error("no instance socket in GET /v1/functions/hello");

    const nginxPort = await freePort();
    writeFileSync(
      join(dir, "nginx.conf"),
      `user root; worker_processes 1; daemon off; error_log ${dir}/nginx-error.log; pid ${dir}/nginx.pid;
events { worker_connections 4096; }
http { access_log off;
  upstream fn { server unix:${socket}; keepalive 256; }
  upstream plain { server unix:${plainSocket}; keepalive 256; }
  server { listen 127.0.0.1:${nginxPort}; location / { proxy_pass http://fn; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $http_host; } }
  server { listen 127.0.0.1:${nginxPort + 1}; location / { proxy_pass http://plain; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $http_host; } } }
`,
    );
    nginx = Bun.spawn(["nginx", "-c", join(dir, "nginx.conf"), "-p", dir], { stdout: "ignore", stderr: "ignore" });
    const nginxUrl = `http://127.0.0.1:${nginxPort}/?name=x`;
    for (let i = 0; i < 100; i++) {
      if ((await fetch(nginxUrl, { headers: { host } }).then((r) => r.status).catch(() => 0)) === 200) break;
      await Bun.sleep(20); // polling for nginx to listen
    }
    const nginxPid = Number(readFileSync(join(dir, "nginx.pid"), "utf8").trim());
    const workerPid = Number(Bun.spawnSync(["pgrep", "-P", String(nginxPid)]).stdout.toString().trim().split("\n")[0]);

    // Warm-up: the JIT of the gateway and the instance, nginx's upstream connections.
    const forgePid = forge.proc.pid;
    wrk(`${url}/?name=x`, host, c, 2, forgePid);
    wrk(nginxUrl, host, c, 2, workerPid);
    const plainUrl = `http://127.0.0.1:${nginxPort + 1}/?name=x`;
    wrk(plainUrl, host, c, 2, workerPid);
    const gw: { rps: number; cpuUs: number }[] = [];
    const ng: { rps: number; cpuUs: number }[] = [];
    const np: { rps: number; cpuUs: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      gw.push(wrk(`${url}/?name=x`, host, c, seconds, forgePid));
      ng.push(wrk(nginxUrl, host, c, seconds, workerPid));
      np.push(wrk(plainUrl, host, c, seconds, workerPid));
    }
    // Added latency, sequential requests: the same client for all three paths.
    const seq = async (target: string, unix?: string): Promise<number> => {
      const r = await runLoad({ url: target, headers: { host }, concurrency: 1, requests: 3000, ...(unix ? { unix } : {}) });
      return Math.round(r.latency.percentile(50));
    };
    const direct = await seq("http://instance/?name=x", socket);
    const viaGw = await seq(`${url}/?name=x`);
    const viaNginx = await seq(nginxUrl);

    const g = { rps: median(gw.map((r) => r.rps)), cpu: median(gw.map((r) => r.cpuUs)) };
    const n = { rps: median(ng.map((r) => r.rps)), cpu: median(ng.map((r) => r.cpuUs)) };
    console.log(`driver ${values.driver}; wrk -t1 -c${c} -d${seconds}s, median of ${rounds} alternating rounds after a warm-up`);
    console.log(`forge gateway: ${g.rps.toFixed(0)} req/s, ${g.cpu.toFixed(1)} us CPU per request`);
    console.log(`nginx (1 worker, keep-alive upstream): ${n.rps.toFixed(0)} req/s, ${n.cpu.toFixed(1)} us CPU per request`);
    console.log(`throughput gateway / nginx: ${(g.rps / n.rps).toFixed(2)}x`);
    console.log(`sequential p50: direct ${direct} us, via gateway ${viaGw} us (+${viaGw - direct} us), via nginx ${viaNginx} us (+${viaNginx - direct} us)`);
    const p = median(np.map((r) => r.rps));
    console.log(`end to end: forge (gateway + instance) ${g.rps.toFixed(0)} req/s, nginx + plain Bun server ${p.toFixed(0)} req/s: ${(g.rps / p).toFixed(2)}x`);
    return 0;
  } finally {
    nginx?.kill("SIGQUIT");
    await nginx?.exited;
    plain?.kill();
    await plain?.exited;
    forge?.proc.kill("SIGTERM");
    await forge?.proc.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

process.exit(await main());
