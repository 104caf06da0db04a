/** Test helpers: a real forge server in a child process on port 0, and the real CLI. */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export const ROOT = resolve(import.meta.dir, "..");
const MAIN = join(ROOT, "src/cli/main.ts");

export interface ForgeProcess extends AsyncDisposable {
  url: string;
  port: number;
  apiKey: string;
  dataDir: string;
  /** The server's process id. */
  pid: number;
  /** Output of the server so far. */
  output(): string;
  /** Stops the server (SIGTERM) and waits; the data dir stays for a restart. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** A request to a function through its subdomain. */
  fn(name: string, path?: string, init?: RequestInit): Promise<Response>;
  /** An authorized control API request. */
  api(path: string, init?: RequestInit): Promise<Response>;
}

export function tempDir(prefix = "forge-test-"): string & Disposable {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return Object.assign(dir, { [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) }) as string & Disposable;
}

/**
 * A temp folder a function may write to: when forge runs as root, process-driver instances
 * run as uids of their own, so the folder is open to all (tests only).
 */
export function sharedDir(prefix = "forge-shared-"): string & Disposable {
  const dir = tempDir(prefix);
  chmodSync(dir, 0o777);
  return dir;
}

/** An empty file in a shared folder that instances of any uid may append to (tests only). */
export function sharedFile(dir: string, name: string): string {
  const path = join(dir, name);
  writeFileSync(path, "");
  chmodSync(path, 0o666);
  return path;
}

/**
 * Starts `forge up --port 0` with its own data dir; waits for the listening line. `root`: a
 * checkout of forge to run instead of this one, on the bun in its node_modules. forge up saves
 * its URL and key in the CLI's config: XDG_CONFIG_HOME is `<data dir>/xdg` unless `env` gives
 * one, so a test never writes the user's ~/.config.
 */
export async function startForge(options: { dataDir?: string; env?: Record<string, string>; root?: string } = {}): Promise<ForgeProcess> {
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), "forge-data-"));
  const ownsDir = options.dataDir === undefined;
  const root = options.root ?? ROOT;
  const bun = options.root ? join(root, "node_modules/bun/bin/bun.exe") : process.execPath;
  const proc = Bun.spawn([bun, join(root, "src/cli/main.ts"), "up", "--port", "0"], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", XDG_CONFIG_HOME: join(dataDir, "xdg"), FORGE_DATA_DIR: dataDir, FORGE_DRIVER: "process", FORGE_STEM_CELLS: "1", ...options.env },
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  const dec = new TextDecoder();
  // Resolved by the output itself: when both lines are there, or when forge exits first.
  const started = Promise.withResolvers<void>();
  const check = (): void => {
    if (/forge listening on http:\/\/\S+/.test(out) && /API key[^:]*: \S+/.test(out)) started.resolve();
  };
  const pump = async (s: ReadableStream<Uint8Array>): Promise<void> => {
    for await (const chunk of s as unknown as AsyncIterable<Uint8Array>) {
      out += dec.decode(chunk);
      check();
    }
  };
  void pump(proc.stdout);
  void pump(proc.stderr);
  void proc.exited.then((code) => started.reject(new Error(`forge exited with ${code}:\n${out}`)));
  const timer = setTimeout(() => started.reject(new Error(`forge did not start within 20 s:\n${out}`)), 20_000);
  try {
    await started.promise;
  } catch (err) {
    proc.kill("SIGKILL");
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const url = /forge listening on (http:\/\/\S+)/.exec(out)?.[1] ?? "";
  const apiKey = /API key[^:]*: (\S+)/.exec(out)?.[1] ?? "";
  const port = Number(new URL(url).port);
  const key = apiKey;
  let stopped = false;
  const stop = async (signal: NodeJS.Signals = "SIGTERM"): Promise<void> => {
    if (stopped) return;
    stopped = true;
    proc.kill(signal);
    await proc.exited;
  };
  return {
    url,
    port,
    apiKey: key,
    dataDir,
    pid: proc.pid,
    output: () => out,
    stop,
    fn: (name, path = "/", init = {}) => {
      const headers = new Headers(init.headers);
      headers.set("host", `${name}.localhost:${port}`);
      return fetch(`${url}${path}`, { ...init, headers });
    },
    api: (path, init = {}) => {
      const headers = new Headers(init.headers);
      if (!headers.has("authorization")) headers.set("authorization", `Bearer ${key}`);
      return fetch(`${url}${path}`, { ...init, headers });
    },
    async [Symbol.asyncDispose]() {
      await stop();
      if (ownsDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** The folder it runs in. Default the checkout's root. */
  cwd?: string;
  /** What it reads on stdin (e.g. a key for `forge login`). Default nothing (EOF). */
  stdin?: string;
}

/**
 * A CLI config folder nobody writes: the default XDG_CONFIG_HOME of `cli()`, so that a test
 * reads no user's ~/.config/forge. A test that logs in gives its own.
 */
const NO_USER_CONFIG = join(tmpdir(), "forge-test-no-user-config");

/**
 * Runs the real CLI against a forge: FORGE_URL and FORGE_API_KEY are the forge's when one is
 * given, else there is no FORGE_* variable but those of `env`. XDG_CONFIG_HOME is an unwritten
 * folder unless `env` gives one (pass HOME and XDG_CONFIG_HOME to act as a user with a config).
 */
export async function cli(forge: { url: string; apiKey: string } | undefined, args: string[], env: Record<string, string> = {}, options: CliOptions = {}): Promise<CliResult> {
  const proc = Bun.spawn([process.execPath, MAIN, ...args], {
    cwd: options.cwd ?? ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "/root",
      XDG_CONFIG_HOME: NO_USER_CONFIG,
      NO_COLOR: "1",
      ...(forge ? { FORGE_URL: forge.url, FORGE_API_KEY: forge.apiKey } : {}),
      ...env,
    },
    stdin: options.stdin === undefined ? "ignore" : new TextEncoder().encode(options.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  return { code, stdout, stderr };
}

/** Waits until `check` returns a truthy value (polling), or fails after `timeoutMs`. */
export async function until<T>(check: () => T | Promise<T>, timeoutMs = 10_000, what = "condition"): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5); // polling interval of a condition wait
  }
}

/**
 * Runs `forge logs <name> -f`, calls `poke` (which makes the function log) until `needle`
 * is printed, then sends Ctrl-C; resolves with the follower's exit code.
 */
export async function followLogsUntil(forge: { url: string; apiKey: string }, name: string, poke: () => Promise<void>, needle: string, timeoutMs = 15_000): Promise<number> {
  const proc = Bun.spawn([process.execPath, MAIN, "logs", name, "-f", "--since", "1s"], {
    env: { PATH: process.env.PATH ?? "", XDG_CONFIG_HOME: NO_USER_CONFIG, FORGE_URL: forge.url, FORGE_API_KEY: forge.apiKey, NO_COLOR: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  const dec = new TextDecoder();
  const reading = (async () => {
    for await (const chunk of proc.stdout as unknown as AsyncIterable<Uint8Array>) out += dec.decode(chunk);
  })();
  try {
    await until(async () => {
      await poke();
      return out.includes(needle);
    }, timeoutMs, `"${needle}" followed`);
    proc.kill("SIGINT");
    const code = await proc.exited;
    await reading;
    return code;
  } finally {
    proc.kill("SIGKILL");
  }
}
