/**
 * Warm requests to one ready instance, three ways, at the same concurrency and request
 * count: through forge's gateway (Host: <name>.<domain>), straight to the instance's Unix
 * socket (the limit: no proxy at all), and through nginx proxying to that same socket with
 * kept-alive upstream connections (the peer proxy). The function is pinned to one instance
 * (maxInstances 1, concurrency = the load's) so all three reach the same process.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { runLoadInWorker, type LoadOptions } from "../load.ts";
import { loadScenario, type ScenarioResult } from "../report.ts";
import { deleteFunction, deployFunction, freePort, info, skipped, waitFor, type BenchTarget, type SuiteContext } from "./_shared.ts";

export const GATEWAY = { name: "warm-gateway", title: "warm requests through forge's gateway (subdomain routing, lease, proxy)" } as const;
export const DIRECT = { name: "warm-direct", title: "warm requests straight to the instance's Unix socket (the limit)" } as const;
export const NGINX = { name: "warm-nginx", title: "warm requests through nginx (1 worker, kept-alive upstream) to the instance socket" } as const;

export type WarmWhich = "warm-gateway" | "warm-direct" | "warm-nginx";

export async function warmScenarios(ctx: SuiteContext, target: BenchTarget, which: ReadonlySet<string>): Promise<ScenarioResult[]> {
  const { concurrency, requests } = ctx.settings;
  const name = `${ctx.prefix}warm`;
  const fn = await deployFunction(target, name, { minWarm: 1, maxInstances: 1, concurrency: Math.max(concurrency, 1) });
  const out: ScenarioResult[] = [];
  try {
    const load = (o: Omit<LoadOptions, "concurrency" | "requests">, n = requests): ReturnType<typeof runLoadInWorker> =>
      runLoadInWorker({ concurrency, requests: n, timeoutMs: 30_000, ...(ctx.progressTo ? { progressTo: ctx.progressTo } : {}), ...o });
    const gateway = { url: `${target.url}/`, headers: { host: fn.host } };
    // Warm-up (not measured): JIT of gateway, instance and generator, connections.
    await load(gateway, Math.min(requests, Math.max(200, concurrency * 10)));

    if (which.has(GATEWAY.name)) out.push(loadScenario(GATEWAY.name, GATEWAY.title, await load(gateway)));

    const socket = await instanceSocket(target, name);
    if (which.has(DIRECT.name)) {
      out.push(socket ? loadScenario(DIRECT.name, DIRECT.title, await load({ url: "http://instance/", unix: socket })) : skipped(DIRECT.name, DIRECT.title, "load", "this forge does not report its instances' sockets"));
    }
    if (which.has(NGINX.name)) {
      if (!socket) out.push(skipped(NGINX.name, NGINX.title, "load", "this forge does not report its instances' sockets"));
      else if (!Bun.which("nginx")) out.push(skipped(NGINX.name, NGINX.title, "load", "nginx is not installed"));
      else {
        await using nginx = await startNginx(join(ctx.tmp, "nginx"), socket, concurrency);
        const url = `http://127.0.0.1:${nginx.port}/`;
        await load({ url }, Math.min(requests, Math.max(200, concurrency * 10)));
        out.push(loadScenario(NGINX.name, NGINX.title, await load({ url })));
      }
    }
    const after = await info(target, name);
    const instances = after.pool?.instances.length ?? 0;
    if (instances !== 1) ctx.notes.push(`the warm function ran on ${instances} instances (expected 1): warm figures mix instances`);
  } finally {
    await deleteFunction(target, name, ctx.logger);
  }
  return out;
}

// --- internal ---

async function instanceSocket(target: BenchTarget, name: string): Promise<string | undefined> {
  const f = await info(target, name);
  const ready = f.pool?.instances.find((i) => i.state === "ready") as { socketPath?: unknown } | undefined;
  return typeof ready?.socketPath === "string" ? ready.socketPath : undefined;
}

interface Nginx extends AsyncDisposable {
  port: number;
}

/** nginx in the foreground with a config of its own in `dir`: one worker, kept-alive upstream to `socket`. */
async function startNginx(dir: string, socket: string, concurrency: number): Promise<Nginx> {
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
  return { port, [Symbol.asyncDispose]: stop };
}
