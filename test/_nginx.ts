/**
 * nginx as the load balancer in front of several forge nodes (README: Several nodes), for
 * tests: one worker, listening on a Unix socket in a folder of its own (no port to race
 * for), passive health checks, and the retry rule README gives: an idempotent request that
 * met a dead or unreachable node goes to the next one; a POST never goes twice.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nginxConfig } from "../src/bench/_nginx.ts";
import { until } from "./_helpers.ts";

export interface Nginx extends AsyncDisposable {
  socket: string;
  /** A request through nginx; `host` picks the function (greet.localhost). */
  fetch(host: string, path?: string, init?: RequestInit): Promise<Response>;
  /** nginx's error log so far. */
  errors(): string;
}

export async function startNginx(servers: string[]): Promise<Nginx> {
  const dir = mkdtempSync(join(tmpdir(), "forge-nginx-"));
  const socket = join(dir, "nginx.sock");
  writeFileSync(join(dir, "nginx.conf"), nginxConfig(servers, `unix:${socket}`, dir));
  const proc = Bun.spawn(["nginx", "-c", join(dir, "nginx.conf"), "-p", dir], { stdout: "ignore", stderr: "pipe" });
  const errors = (): string => {
    try {
      return readFileSync(join(dir, "error.log"), "utf8");
    } catch {
      return "";
    }
  };
  const request = (host: string, path = "/", init: RequestInit = {}): Promise<Response> => {
    const headers = new Headers(init.headers);
    headers.set("host", host);
    return fetch(`http://nginx${path}`, { ...init, headers, unix: socket } as RequestInit);
  };
  try {
    await until(() => existsSync(socket) || proc.exitCode !== null, 10_000, "nginx listening");
    if (proc.exitCode !== null) throw new Error(`nginx exited with ${proc.exitCode}: ${await new Response(proc.stderr).text()} ${errors()}`);
  } catch (err) {
    proc.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    socket,
    fetch: request,
    errors,
    async [Symbol.asyncDispose]() {
      proc.kill("SIGQUIT");
      await proc.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
