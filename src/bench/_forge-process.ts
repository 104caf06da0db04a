/** A forge in a child process for benchmarks measured from outside it (wrk), with hello deployed. */
import { readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "../..");
const MAIN = join(ROOT, "src/cli/main.ts");

export interface ForgeChild {
  url: string;
  port: number;
  key: string;
  proc: ReturnType<typeof Bun.spawn>;
  /** Host header reaching examples/hello by subdomain. */
  host: string;
}

/**
 * Starts `forge up --port 0` of the checkout at `root` (default this one) with `env`; resolves
 * once it printed its URL and key. forge up saves them in the CLI's config: XDG_CONFIG_HOME is
 * `<FORGE_DATA_DIR>/xdg` (else a temp folder) unless `env` gives one, never the user's.
 * FORGE_STEM_CELLS is "0" unless `env` sets it; a variable set to undefined is left unset
 * (FORGE_STEM_CELLS: undefined gives forge's own default).
 */
export async function startForgeChild(env: Record<string, string | undefined>, root = ROOT): Promise<Omit<ForgeChild, "host">> {
  const xdg = env.FORGE_DATA_DIR ? join(env.FORGE_DATA_DIR, "xdg") : join(tmpdir(), `forge-bench-xdg-${process.pid}`);
  const merged: Record<string, string | undefined> = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", XDG_CONFIG_HOME: xdg, NO_COLOR: "1", FORGE_STEM_CELLS: "0", ...env };
  const proc = Bun.spawn([process.execPath, join(root, "src/cli/main.ts"), "up", "--port", "0"], {
    cwd: root,
    env: Object.fromEntries(Object.entries(merged).filter((e): e is [string, string] => e[1] !== undefined)),
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
  if (!url || !key) {
    proc.kill("SIGKILL");
    throw new Error(`forge did not start:\n${out}`);
  }
  return { url, key, port: Number(new URL(url).port), proc };
}

/** Starts `forge up --port 0` with `env` and deploys examples/hello with `deployFlags`. */
export async function startForgeWithHello(env: Record<string, string>, deployFlags: string[]): Promise<ForgeChild> {
  const { url, key, port, proc } = await startForgeChild(env);
  const deploy = Bun.spawnSync([process.execPath, MAIN, "deploy", join(ROOT, "examples/hello"), ...deployFlags], {
    env: { PATH: process.env.PATH ?? "", FORGE_URL: url, FORGE_API_KEY: key },
  });
  if (deploy.exitCode !== 0) {
    proc.kill("SIGKILL");
    throw new Error(`deploy failed: ${deploy.stderr.toString()}`);
  }
  return { url, port, key, proc, host: `hello.localhost:${port}` };
}

/** CPU time (user + system) a process has used, microseconds, from /proc. */
export function cpuMicros(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10_000; // utime + stime in 10 ms ticks
}

/** One wrk run against `url` with a Host header; requests/s and CPU per request of process `pid`. */
export function wrk(url: string, host: string, connections: number, seconds: number, pid: number): { rps: number; cpuUs: number } {
  const before = cpuMicros(pid);
  const r = Bun.spawnSync(["wrk", "-t1", `-c${connections}`, `-d${seconds}s`, "-H", `Host: ${host}`, url]);
  const text = r.stdout.toString();
  const requests = Number(/(\d+) requests in/.exec(text)?.[1] ?? NaN);
  return { rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? NaN), cpuUs: (cpuMicros(pid) - before) / requests };
}

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
