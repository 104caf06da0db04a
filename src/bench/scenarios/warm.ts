/**
 * Warm requests to one ready instance, three ways, at the same concurrency and request
 * count: through forge's gateway (Host: <name>.<domain>), straight to the instance's Unix
 * socket (the limit: no proxy at all), and through nginx proxying to that same socket with
 * kept-alive upstream connections (the peer proxy). The function is pinned to one instance
 * (maxInstances 1, concurrency = the load's) so all three reach the same process.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { runLoadInWorker, type LoadOptions, type LoadResult } from "../load.ts";
import { loadScenario, type ScenarioResult } from "../report.ts";
import { deleteFunction, deployFunction, freePort, info, skipped, waitFor, type BenchTarget, type SuiteContext } from "./_shared.ts";

export const GATEWAY = { name: "warm-gateway", title: "warm requests through forge's gateway (subdomain routing, lease, proxy)" } as const;
export const DIRECT = { name: "warm-direct", title: "warm requests straight to the instance's Unix socket (the limit)" } as const;
export const NGINX = { name: "warm-nginx", title: "warm requests through nginx (1 worker, kept-alive upstream) to the instance socket" } as const;
export const GATEWAY_NODE = { name: "warm-gateway-node", title: "warm requests through forge's gateway to the same function on runtime node" } as const;

export type WarmWhich = "warm-gateway" | "warm-direct" | "warm-nginx";

export async function warmScenarios(ctx: SuiteContext, target: BenchTarget, which: ReadonlySet<string>): Promise<ScenarioResult[]> {
  const { concurrency, requests, warmupMs } = ctx.settings;
  const name = `${ctx.prefix}warm`;
  const fn = await deployFunction(target, name, { minWarm: 1, maxInstances: 1, concurrency: Math.max(concurrency, 1) });
  const out: ScenarioResult[] = [];
  try {
    // Each load warms up first, in the worker that then measures (not counted): the JIT of
    // the gateway, of the instance and of the generator, and connections. A warm-up of 200
    // requests left the gateway's run with the instance's and the gateway's first few
    // thousand requests, at a third to half of their later rate, while nginx's run came
    // after 10 000 requests had warmed the instance: the gateway came out at 45-70% of nginx.
    const load = (o: Omit<LoadOptions, "concurrency" | "requests">): Promise<LoadResult> =>
      runLoadInWorker({ concurrency, requests, warmupMs, timeoutMs: 30_000, ...(ctx.progressTo ? { progressTo: ctx.progressTo } : {}), ...o });
    const measured = (scenario: { name: string; title: string }, r: LoadResult): ScenarioResult => {
      // The generator's thread near a whole core: the figure is the generator's limit, not the target's.
      const busy = r.durationMs > 0 ? r.cpuUs / 1000 / r.durationMs : 0;
      if (busy > 0.9) ctx.notes.push(`${scenario.name}: the load generator's thread was ${Math.round(busy * 100)}% busy; the figure may be its limit`);
      return loadScenario(scenario.name, scenario.title, r);
    };
    const gateway = { url: `${target.url}/`, headers: { host: fn.host } };
    if (which.has(GATEWAY.name)) out.push(measured(GATEWAY, await load(gateway)));

    const socket = await instanceSocket(target, name);
    if (which.has(DIRECT.name)) {
      out.push(socket ? measured(DIRECT, await load({ url: "http://instance/", unix: socket })) : skipped(DIRECT.name, DIRECT.title, "load", "this forge does not report its instances' sockets"));
    }
    if (which.has(NGINX.name)) {
      if (!socket) out.push(skipped(NGINX.name, NGINX.title, "load", "this forge does not report its instances' sockets"));
      else if (!Bun.which("nginx")) out.push(skipped(NGINX.name, NGINX.title, "load", "nginx is not installed"));
      else {
        await using nginx = await startNginx(join(ctx.tmp, "nginx"), socket, concurrency);
        out.push(measured(NGINX, await load({ url: `http://127.0.0.1:${nginx.port}/` })));
      }
    }
    const after = await info(target, name);
    const instances = after.pool?.instances.length ?? 0;
    if (instances !== 1) ctx.notes.push(`the warm function ran on ${instances} instances (expected 1): warm figures mix instances`);
  } finally {
    await deleteFunction(target, name, ctx.logger);
  }
  if (which.has(GATEWAY_NODE.name)) out.push(await warmNode(ctx, target));
  return out;
}

/** The gateway load again, on the same function deployed with runtime node (one instance, same concurrency). */
async function warmNode(ctx: SuiteContext, target: BenchTarget): Promise<ScenarioResult> {
  const { concurrency, requests, warmupMs } = ctx.settings;
  const name = `${ctx.prefix}warm-node`;
  const fn = await deployFunction(target, name, { minWarm: 1, maxInstances: 1, concurrency: Math.max(concurrency, 1) }, "node");
  try {
    const r = await runLoadInWorker({ concurrency, requests, warmupMs, timeoutMs: 30_000, url: `${target.url}/`, headers: { host: fn.host }, ...(ctx.progressTo ? { progressTo: ctx.progressTo } : {}) });
    return loadScenario(GATEWAY_NODE.name, GATEWAY_NODE.title, r);
  } finally {
    await deleteFunction(target, name, ctx.logger);
  }
}

/** The socket of the function's ready instance, when the forge reports it. */
export async function instanceSocket(target: BenchTarget, name: string): Promise<string | undefined> {
  const f = await info(target, name);
  const ready = f.pool?.instances.find((i) => i.state === "ready") as { socketPath?: unknown } | undefined;
  return typeof ready?.socketPath === "string" ? ready.socketPath : undefined;
}

export interface Nginx extends AsyncDisposable {
  port: number;
  /** The nginx master's pid (its one worker is a child of it). */
  pid: number;
}

/** nginx in the foreground with a config of its own in `dir`: one worker, kept-alive upstream to `socket`. */
export async function startNginx(dir: string, socket: string, concurrency: number): Promise<Nginx> {
  await mkdir(join(dir, "logs"), { recursive: true });
  const port = freePort();
  // As root, nginx workers would drop to nobody and lose access to the 0700 socket folder.
  const user = process.getuid?.() === 0 ? "user root root;" : "";
  const conf = `
${user}
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream instance {
    server unix:${socket};
    keepalive ${Math.max(16, concurrency)};
  }
  server {
    listen 127.0.0.1:${port};
    keepalive_requests 1000000;
    location / {
      proxy_pass http://instance;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`;
  await Bun.write(join(dir, "nginx.conf"), conf);
  const proc = Bun.spawn(["nginx", "-p", dir, "-c", join(dir, "nginx.conf")], { stdout: "ignore", stderr: "pipe" });
  const stderr = new Response(proc.stderr).text();
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null) proc.kill("SIGTERM");
    await proc.exited;
  };
  try {
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`nginx exited with ${proc.exitCode}: ${(await stderr).trim().slice(0, 500)}`);
      try {
        const res = await fetch(`http://127.0.0.1:${port}/`, { keepalive: false });
        await res.arrayBuffer();
        return res.status === 200;
      } catch {
        return false;
      }
    }, "nginx to answer", 10_000);
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, pid: proc.pid, [Symbol.asyncDispose]: stop };
}
