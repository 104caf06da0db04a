import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { until } from "../../test/_helpers.ts";
import { isCI } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { LogRing, MAX_LINE_CHARS, parseLogLine, readLines } from "./_log-parse.ts";
import { CONTRACT_BUNDLE, driverContract } from "./driver.case.ts";
import type { ExitInfo, InstanceSpec, LogLine } from "./driver.ts";
import { forward, health } from "./instance-client.ts";
import { createProcessDriver, type ProcessDriver, type ProcessDriverOptions } from "./process-driver.ts";

const quiet = createConsola({ level: -999 });

/** Whether a pid runs; a zombie (exited, not yet reaped by a parent that is gone) does not. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

/** A process driver over its own data dir, both gone on dispose. */
async function makeDriver(options: Partial<ProcessDriverOptions> = {}) {
  const dataDir = await mkdtemp(join(tmpdir(), "forge-pd-"));
  const driver = createProcessDriver({ dataDir, logger: quiet, ...options });
  const dispose = async () => {
    try {
      await driver.dispose();
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  };
  return Object.assign(Object.create(driver) as ProcessDriver, { dataDir, dispose, [Symbol.asyncDispose]: dispose });
}

driverContract("process", () => makeDriver(), {
  async kill(_driver, handle) {
    const { pid } = await health(handle);
    process.kill(pid, "SIGKILL");
  },
});

describe("process driver", () => {
  const spec = (overrides: Partial<InstanceSpec>): InstanceSpec => ({
    id: `p${crypto.randomUUID().slice(0, 8)}`,
    role: "instance",
    runtime: "bun",
    function: "greet",
    version: 1,
    env: {},
    memoryMb: 256,
    ...overrides,
  });

  test("a module that fails to load fails the start with its error, and leaves nothing behind", async () => {
    await using driver = await makeDriver();
    const bundlePath = join(driver.dataDir, "broken.mjs");
    await writeFile(bundlePath, `throw new Error("cannot load me");`);
    const error = await driver.start(spec({ bundlePath })).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ForgeError);
    expect((error as ForgeError).code).toBe(ErrorCode.InstanceStartFailed);
    expect((error as ForgeError).message).toContain("cannot load me");
    expect(await driver.list()).toEqual([]);
    expect(await readdir(join(driver.dataDir, "instances"))).toEqual([]);
  });

  test("a module without a known export fails the start with a clear message", async () => {
    await using driver = await makeDriver();
    const bundlePath = join(driver.dataDir, "nothing.mjs");
    await writeFile(bundlePath, `export const answer = 42;`);
    const error = await driver.start(spec({ bundlePath })).catch((err: unknown) => err);
    expect((error as ForgeError).message).toContain("exports answer");
  });

  test("the instance runs in its own folder with a copy of the bundle, and stop removes it", async () => {
    await using driver = await makeDriver();
    const bundlePath = join(driver.dataDir, "where.mjs");
    await writeFile(
      bundlePath,
      `export default () => Response.json({ cwd: process.cwd(), home: process.env.HOME, url: import.meta.url });`,
    );
    const handle = await driver.start(spec({ bundlePath }));
    const dir = join(driver.dataDir, "instances", handle.id);
    expect(handle.endpoint.socketPath).toBe(join(dir, "s.sock"));
    const where = (await (await forward(handle, new Request("http://x/"), "r1")).json()) as Record<string, string>;
    expect(where).toEqual({ cwd: dir, home: dir, url: `file://${dir}/fn.mjs` });
    await driver.stop(handle.id);
    expect(await readdir(join(driver.dataDir, "instances"))).toEqual([]);
  });

  test("a data dir too deep for a socket path falls back to a short folder", async () => {
    const deep = await mkdtemp(join(tmpdir(), "forge-deep-"));
    try {
      await using driver = await makeDriver({ dataDir: join(deep, "x".repeat(120)) });
      const bundlePath = join(deep, "fn.mjs");
      await writeFile(bundlePath, CONTRACT_BUNDLE);
      const handle = await driver.start(spec({ bundlePath, env: { GREETING: "deep" } }));
      expect(Buffer.byteLength(handle.endpoint.socketPath)).toBeLessThanOrEqual(100);
      expect(await (await forward(handle, new Request("http://x/"), "r1")).text()).toBe("ok deep");
      await driver.stop(handle.id);
    } finally {
      await rm(deep, { recursive: true, force: true });
    }
  });

  test("stop kills an instance that ignores SIGTERM after the grace period", async () => {
    await using driver = await makeDriver({ stopGraceMs: 50 });
    const bundlePath = join(driver.dataDir, "stubborn.mjs");
    // Set in a request: the shim registers its own SIGTERM handler after loading the module.
    await writeFile(
      bundlePath,
      `export default () => {
         process.removeAllListeners("SIGTERM");
         process.on("SIGTERM", () => console.log("not stopping"));
         return new Response("stubborn");
       };`,
    );
    const handle = await driver.start(spec({ bundlePath }));
    expect(await (await forward(handle, new Request("http://x/"), "r1")).text()).toBe("stubborn");
    const lines: string[] = [];
    driver.onLog((line) => lines.push(line.text));
    const exits: unknown[] = [];
    driver.onExit((info) => exits.push(info));
    await driver.stop(handle.id);
    expect(lines).toContain("not stopping");
    expect(await driver.list()).toEqual([]);
    expect(exits).toEqual([]);
  });

  test("an aborted start stops the child", async () => {
    await using driver = await makeDriver();
    const bundlePath = join(driver.dataDir, "fn.mjs");
    await writeFile(bundlePath, CONTRACT_BUNDLE);
    const abort = new AbortController();
    const starting = driver.start(spec({ bundlePath }), abort.signal);
    abort.abort(new Error("changed my mind"));
    await expect(starting).rejects.toThrow();
    expect(await driver.list()).toEqual([]);
  });

  test("instances die with forge, even when forge is SIGKILLed", async () => {
    await using driver = await makeDriver();
    const bundlePath = join(driver.dataDir, "fn.mjs");
    await writeFile(bundlePath, CONTRACT_BUNDLE);
    // A stand-in for forge: a process running the driver, killed without a chance to stop anything.
    const script = join(driver.dataDir, "forge.ts");
    await writeFile(
      script,
      `import { createProcessDriver } from ${JSON.stringify(join(import.meta.dir, "process-driver.ts"))};
       import { health } from ${JSON.stringify(join(import.meta.dir, "instance-client.ts"))};
       const driver = createProcessDriver({ dataDir: ${JSON.stringify(join(driver.dataDir, "forge"))} });
       const handle = await driver.start(${JSON.stringify(spec({ bundlePath }))});
       console.log((await health(handle)).pid);
       setInterval(() => {}, 60_000);`,
    );
    const forge = Bun.spawn([process.execPath, script], { stdout: "pipe", stderr: "inherit" });
    try {
      const { value: first } = await readLines(forge.stdout).next();
      const pid = Number(first);
      expect(alive(pid)).toBe(true);
      forge.kill("SIGKILL");
      await until(() => !alive(pid), 4_000, "the orphaned instance to exit");
    } finally {
      forge.kill("SIGKILL");
    }
  });

  test("a child killed by a signal is reported as killed, with Docker's 128+n code", async () => {
    await using driver = await makeDriver();
    const bundlePath = join(driver.dataDir, "fn.mjs");
    await writeFile(bundlePath, CONTRACT_BUNDLE);
    const handle = await driver.start(spec({ bundlePath }));
    const exited = new Promise((resolve) => driver.onExit(resolve));
    process.kill((await health(handle)).pid, "SIGKILL");
    expect(await exited).toEqual({ id: handle.id, code: 137, reason: "killed" });
  });

  test("a missing bun binary fails the start and leaves no folder", async () => {
    await using driver = await makeDriver({ bunPath: "/nonexistent/bun" });
    const error = await driver.start(spec({})).catch((err: unknown) => err);
    expect((error as ForgeError).code).toBe(ErrorCode.InstanceStartFailed);
    expect(await readdir(join(driver.dataDir, "instances"))).toEqual([]);
  });

  test("refuses a docker-runtime spec", async () => {
    await using driver = await makeDriver();
    const error = await driver.start(spec({ runtime: "docker", image: "x" })).catch((err: unknown) => err);
    expect((error as ForgeError).code).toBe(ErrorCode.DriverUnavailable);
  });
});

/**
 * Reads the cgroup it was loaded in; /grow holds 1 MiB more every ms until stopped (2 GiB at
 * most: then it answers, and the limit did not hold).
 */
const MIB = 1024 * 1024;

/** Starts a child process holding 80 MiB, which ends when its parent does (its stdin closes). */
const SPAWN_BUNDLE = `
let child;
export default {
  async fetch() {
    const code = "globalThis.h = []; for (let i = 0; i < 80; i++) h.push(Buffer.alloc(1 << 20, i + 1)); console.log('ready'); process.stdin.on('data', () => {}); process.stdin.on('end', () => process.exit(0));";
    child ??= Bun.spawn([process.execPath, "-e", code], { stdin: "pipe", stdout: "pipe" });
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    reader.releaseLock();
    return new Response(new TextDecoder().decode(value).trim());
  },
};
`;

const GROW_BUNDLE = `
import { readFileSync } from "node:fs";
const cgroupAtLoad = readFileSync("/proc/self/cgroup", "utf8");
const held = [];
export default async (req) => {
  if (new URL(req.url).pathname !== "/grow") return Response.json({ cgroupAtLoad });
  while (held.length < 2048) {
    held.push(Buffer.alloc(1 << 20, 7));
    await new Promise((r) => setTimeout(r, 1));
  }
  return new Response("not stopped");
};`;

describe("memory limits", () => {
  const root = process.getuid?.() === 0;
  const spec = (overrides: Partial<InstanceSpec>): InstanceSpec => ({
    id: `m${crypto.randomUUID().slice(0, 8)}`,
    role: "instance",
    runtime: "bun",
    function: "grower",
    version: 1,
    env: {},
    memoryMb: 64,
    ...overrides,
  });

  /** Starts a grower, makes it grow, and resolves with its exit notice and what it logged. */
  async function grow(driver: ProcessDriver & { dataDir: string }, overrides: Partial<InstanceSpec> = {}, before?: (id: string) => Promise<void>) {
    const bundlePath = join(driver.dataDir, "grow.mjs");
    await writeFile(bundlePath, GROW_BUNDLE);
    const handle = await driver.start(spec({ bundlePath, ...overrides }));
    const lines: LogLine[] = [];
    driver.onLog((line) => line.instance === handle.id && lines.push(line));
    const exited = new Promise<ExitInfo>((resolve) => driver.onExit((info) => info.id === handle.id && resolve(info)));
    const loaded = (await (await forward(handle, new Request("http://x/"), "r0")).json()) as { cgroupAtLoad: string };
    await before?.(handle.id);
    const answer = await forward(handle, new Request("http://x/grow"), "r1").then(
      (r) => r.text(),
      (err: unknown) => err,
    );
    return { handle, loaded, answer, exit: await exited, lines: lines.map((l) => l.text) };
  }

  test("watching resident memory: an instance that goes over its limit is stopped with reason oom, and its log says so", async () => {
    await using driver = await makeDriver({ memoryLimits: "rss" });
    expect(driver.memoryLimits).toBe("rss watch");
    const { handle, answer, exit, lines } = await grow(driver);
    expect(answer).toBeInstanceOf(ForgeError); // the connection closed unanswered
    expect(exit).toEqual({ id: handle.id, code: 137, reason: "oom" });
    expect(lines).toContainEqual(expect.stringMatching(/^forge: instance stopped: it went over its memory limit of 64 MiB \(it used \d+ MiB\)$/));
  });

  test("without a cgroup, an instance's memory usage counts the processes its function started", async () => {
    await using driver = await makeDriver({ memoryLimits: "rss" });
    const bundlePath = join(driver.dataDir, "parent.mjs");
    await writeFile(bundlePath, SPAWN_BUNDLE);
    const handle = await driver.start(spec({ bundlePath, memoryMb: 256 }));
    const before = (await driver.memoryUsage()).get(handle.id) ?? 0;
    expect(before).toBeGreaterThan(MIB);
    expect(await (await forward(handle, new Request("http://x/spawn"), "r1")).text()).toBe("ready");
    const after = (await driver.memoryUsage()).get(handle.id) ?? 0;
    // the child's 80 MiB, not the parent's: it allocated nothing itself
    expect(after - before).toBeGreaterThanOrEqual(60 * MIB);
  });

  describe.skipIf(!root && !isCI())("with a memory cgroup per instance (as root)", () => {
    test("the module loads inside its cgroup; one that goes over is killed by the kernel, with reason oom and a line in its log", async () => {
      expect(root).toBe(true); // under CI the test runs as root, and the cgroup file system must be writable
      await using driver = await makeDriver({ memoryLimits: "cgroup" });
      expect(driver.memoryLimits).toMatch(/^cgroup v[12]$/);
      const { handle, loaded, answer, exit, lines } = await grow(driver);
      expect(loaded.cgroupAtLoad).toContain(`/forge/`);
      expect(loaded.cgroupAtLoad).toContain(`/${handle.id}\n`);
      expect(answer).toBeInstanceOf(ForgeError);
      expect(exit).toEqual({ id: handle.id, code: 137, reason: "oom" });
      expect(lines).toContain("forge: instance stopped: it went over its memory limit of 64 MiB");
    });

    test("setMemory (a stem cell specialized for a function) moves the limit: the message names the new one", async () => {
      await using driver = await makeDriver({ memoryLimits: "cgroup" });
      const { exit, lines } = await grow(driver, { memoryMb: 256 }, (id) => driver.setMemory?.(id, 48) ?? Promise.resolve());
      expect(exit.reason).toBe("oom");
      expect(lines).toContain("forge: instance stopped: it went over its memory limit of 48 MiB");
    });

    test("a module that goes over its limit while it loads fails the start, naming the limit", async () => {
      await using driver = await makeDriver({ memoryLimits: "cgroup" });
      const bundlePath = join(driver.dataDir, "big.mjs");
      await writeFile(bundlePath, `const held = []; for (let i = 0; i < 2048; i++) held.push(Buffer.alloc(1 << 20, 7)); export default () => new Response(String(held.length));`);
      const error = await driver.start(spec({ bundlePath })).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(ForgeError);
      expect((error as ForgeError).code).toBe(ErrorCode.InstanceStartFailed);
      expect((error as ForgeError).message).toBe("the instance went over its memory limit of 64 MiB while it started");
      expect(await driver.list()).toEqual([]);
    });
  });
});

describe("log parsing (_log-parse.ts)", () => {
  const streamOf = (...chunks: (string | Uint8Array)[]) =>
    new ReadableStream<Uint8Array>({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk);
        controller.close();
      },
    });
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    const lines: string[] = [];
    for await (const line of readLines(stream)) lines.push(line);
    return lines;
  };

  test("splits lines across chunks, CRLF and a split multi-byte character, keeping a last unterminated line", async () => {
    const euro = new TextEncoder().encode("€");
    expect(await collect(streamOf("a\nb", "c\r\n", euro.slice(0, 1), euro.slice(1), "\n\nlast"))).toEqual([
      "a",
      "bc",
      "€",
      "",
      "last",
    ]);
  });

  test("cuts a line longer than the limit", async () => {
    const lines = await collect(streamOf("x".repeat(MAX_LINE_CHARS + 10)));
    expect(lines.map((l) => l.length)).toEqual([MAX_LINE_CHARS, 10]);
  });

  test("takes the request prefix off", () => {
    expect(parseLogLine("[req:abc-1] hello [req:x] y")).toEqual({ requestId: "abc-1", text: "hello [req:x] y" });
    expect(parseLogLine("[req:] nope")).toEqual({ text: "[req:] nope" });
    expect(parseLogLine("plain")).toEqual({ text: "plain" });
  });

  test("the ring keeps the most recent lines, oldest first", () => {
    const ring = new LogRing(3);
    for (let i = 0; i < 5; i++) ring.push({ ts: i, instance: "i", stream: "stdout", text: String(i) });
    expect(ring.snapshot().map((l) => l.text)).toEqual(["2", "3", "4"]);
  });
});
