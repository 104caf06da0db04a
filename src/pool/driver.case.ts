/**
 * The one contract every Driver honours, as a bun:test suite: the fake, process and docker
 * drivers each run it from their own *.test.ts. Driver-agnostic: what differs (how to kill
 * an instance from outside, what a spec needs, e.g. an image) comes in through options.
 */
import { expect, test } from "bun:test";
import { chmod, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { BUNDLE_FILE, type Driver, type ExitInfo, type InstanceHandle, type InstanceSpec, type LogLine } from "./driver.ts";
import type { FakeHandler } from "./fake-driver.ts";
import { forward, health, specialize } from "./instance-client.ts";

/** The function every contract instance runs. Its paths are the suite's probes. */
export const CONTRACT_BUNDLE = `
export default {
  async fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/exit") process.exit(3);
    if (url.pathname === "/env") return Response.json(Object.keys(process.env));
    if (url.pathname === "/allocate") {
      // filled, so every page is resident (a zeroed allocation may stay untouched)
      const mb = Number(url.searchParams.get("mb"));
      globalThis.held ??= [];
      for (let i = 0; i < mb; i++) globalThis.held.push(Buffer.alloc(1024 * 1024, i + 1));
      return new Response(String(globalThis.held.length));
    }
    if (url.pathname === "/file") return new Response(await Bun.file(import.meta.dir + "/data.txt").text());
    if (url.pathname === "/where") return Response.json({ dir: import.meta.dir, cwd: process.cwd() });
    if (url.pathname === "/count") return new Response(String(require("node:fs").readdirSync(import.meta.dir, { recursive: true }).length));
    if (url.pathname === "/write") {
      try {
        require("node:fs").writeFileSync(import.meta.dir + "/data.txt", "overwritten");
        return new Response("written");
      } catch {
        return new Response("refused");
      }
    }
    if (url.pathname === "/slow") {
      const n = url.searchParams.get("n");
      console.log("before " + n);
      await new Promise((resolve) => setTimeout(resolve, 1 + (Number(n) % 4)));
      console.log("after " + n);
      return new Response(n);
    }
    console.log("hello from", url.pathname);
    return new Response("ok " + process.env.GREETING);
  },
};
`;

const MIB = 1024 * 1024;

/**
 * What CONTRACT_BUNDLE does, for the fake driver, which runs no code: the same answers,
 * log lines and exit.
 */
export const contractBundleEmulation: FakeHandler = async (request, spec, ctx) => {
  const url = new URL(request.url);
  if (url.pathname === "/exit") {
    ctx.exit(3);
    return new Response("exiting", { status: 500 });
  }
  if (url.pathname === "/env") return Response.json(Object.keys(spec.env));
  if (url.pathname === "/allocate") {
    const mb = Number(url.searchParams.get("mb"));
    ctx.allocate(mb * MIB);
    return new Response(String(mb));
  }
  // the fake's instance "runs" in the folder it was given (its copy after a specialization)
  if (url.pathname === "/file") return new Response(await Bun.file(join(spec.artifactDir ?? "", "data.txt")).text());
  if (url.pathname === "/where") return Response.json({ dir: spec.artifactDir ?? null, cwd: spec.artifactDir ?? null });
  if (url.pathname === "/count") return new Response(String((await readdir(spec.artifactDir ?? "", { recursive: true })).length));
  if (url.pathname === "/write") return new Response("refused");
  if (url.pathname === "/slow") {
    const n = url.searchParams.get("n");
    ctx.log(`before ${n}`);
    await new Promise((resolve) => setTimeout(resolve, 1 + (Number(n) % 4)));
    ctx.log(`after ${n}`);
    return new Response(n);
  }
  ctx.log(`hello from ${url.pathname}`);
  return new Response(`ok ${spec.env.GREETING}`);
};

export interface DriverContractOptions<D extends Driver = Driver> {
  /** Kills an instance from outside forge, as a crash or the OOM killer would (SIGKILL, docker kill). */
  kill(driver: D, handle: InstanceHandle): Promise<void>;
  /** Completes a spec for this driver (e.g. the runtime image for docker). Default: as is. */
  spec?(spec: InstanceSpec): InstanceSpec;
  /** Upper bound on waiting for an event (exit, log line) before the test fails. Default 10 000. */
  waitMs?: number;
  /** Timeout of each test (bun's default of 5 s is short for containers). Default 30 000. */
  testTimeoutMs?: number;
}

/**
 * Registers the contract tests for one driver. `make` builds a fresh driver per test (its
 * dispose cleans up all it made); `D` lets `options.kill` reach the driver's own helpers.
 */
export function driverContract<D extends Driver>(
  name: string,
  make: () => Promise<D>,
  options: DriverContractOptions<D>,
): void {
  const waitMs = options.waitMs ?? 10_000;
  const timeout = options.testTimeoutMs ?? 30_000;
  const complete = options.spec ?? ((spec: InstanceSpec) => spec);

  /** A driver and a folder holding the contract bundle, both gone when the test ends. */
  async function setup() {
    const dir = await mkdtemp(join(tmpdir(), "forge-contract-"));
    const bundlePath = join(dir, "fn.mjs");
    await writeFile(bundlePath, CONTRACT_BUNDLE);
    // a version's folder as a deploy leaves it: the bundle at its root, files read-only
    const artifactDir = join(dir, "artifact");
    await mkdir(join(artifactDir, "lib"), { recursive: true });
    for (const [path, text] of [[BUNDLE_FILE, CONTRACT_BUNDLE], ["data.txt", "data of the version"], ["lib/more.txt", "more"]] as const) {
      await writeFile(join(artifactDir, path), text);
      await chmod(join(artifactDir, path), 0o444);
    }
    let driver: D;
    try {
      driver = await make();
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    const instanceSpec = (overrides: Partial<InstanceSpec> = {}): InstanceSpec =>
      complete({
        id: `c${crypto.randomUUID().slice(0, 8)}`,
        role: "instance",
        runtime: "bun",
        function: "greet",
        version: 1,
        bundlePath,
        env: { GREETING: "Hello" },
        memoryMb: 256,
        ...overrides,
      });
    return {
      driver,
      instanceSpec,
      artifactDir,
      async [Symbol.asyncDispose]() {
        try {
          await driver.dispose();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  }

  /** Resolves with the first event `subscribe` delivers that matches, or fails after waitMs. */
  function nextEvent<T>(subscribe: (listener: (event: T) => void) => () => void, match: (event: T) => boolean, what: string) {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        unsubscribe();
        reject(new Error(`${name}: no ${what} within ${waitMs} ms`));
      }, waitMs);
      const unsubscribe = subscribe((event) => {
        if (!match(event)) return;
        clearTimeout(timer);
        unsubscribe();
        resolve(event);
      });
    });
  }

  const exitOf = (driver: Driver, id: string) =>
    nextEvent<ExitInfo>((l) => driver.onExit(l), (info) => info.id === id, `exit notice for ${id}`);

  const get = (handle: InstanceHandle, path: string, requestId: string = crypto.randomUUID()) =>
    forward(handle, new Request(`http://greet.localhost${path}`), requestId);

  test(`${name}: starts an instance from a bundle and serves it with its env`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    expect(handle.spec.function).toBe("greet");
    const response = await get(handle, "/hello?x=1");
    expect(response.status).toBe(200);
    expect(await response.text()).toBe("ok Hello");
    const info = await health(handle);
    expect(info).toMatchObject({ ok: true, specialized: true, function: "greet", version: 1 });
  }, timeout);

  test(`${name}: keeps forge's own environment out of the function`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    const keys = (await (await get(handle, "/env")).json()) as string[];
    expect(keys).toContain("GREETING");
    expect(keys.filter((key) => key.startsWith("FORGE_"))).toEqual([]);
  }, timeout);

  test(`${name}: specializes a generic cell once, then serves the function`, async () => {
    await using t = await setup();
    const cell = await t.driver.start(
      t.instanceSpec({ role: "cell", function: undefined, version: undefined, bundlePath: undefined, env: {} }),
    );
    expect(await health(cell)).toMatchObject({ ok: true, specialized: false });
    expect((await get(cell, "/hello")).status).toBe(503);

    const request = { function: "late", version: 2, code: CONTRACT_BUNDLE, env: { GREETING: "Hi" } };
    const result = await specialize(cell, cell.controlToken, request);
    expect(result.loadMs).toBeGreaterThanOrEqual(0);
    expect(await health(cell)).toMatchObject({ specialized: true, function: "late", version: 2 });
    const response = await get(cell, "/hello");
    expect(await response.text()).toBe("ok Hi");

    await expect(specialize(cell, cell.controlToken, { ...request, function: "other" })).rejects.toBeInstanceOf(
      ForgeError,
    );
    expect(await (await get(cell, "/hello")).text()).toBe("ok Hi");
  }, timeout);

  test(`${name}: a cell gets its own copy of a version's folder and runs in it once specialized`, async () => {
    await using t = await setup();
    const cell = await t.driver.start(
      t.instanceSpec({ role: "cell", function: undefined, version: undefined, bundlePath: undefined, env: {} }),
    );
    const placed = await t.driver.placeArtifact(cell.id, t.artifactDir);
    expect(placed.bundle).toBe(`${placed.dir}/${BUNDLE_FILE}`);
    expect(placed.dir).not.toBe(t.artifactDir);
    await specialize(cell, cell.controlToken, { function: "folder", version: 4, ...placed, env: { GREETING: "Hi" } });
    expect(await (await get(cell, "/file")).text()).toBe("data of the version");
    expect(await (await get(cell, "/where")).json()).toEqual({ dir: placed.dir, cwd: placed.dir });
    // the copy is read-only to the function: the version's folder stays as deployed
    expect(await (await get(cell, "/write")).text()).toBe("refused");
    expect(await Bun.file(join(t.artifactDir, "data.txt")).text()).toBe("data of the version");
    expect(await (await get(cell, "/hello")).text()).toBe("ok Hi");
  }, timeout);

  test(`${name}: an instance started from a version's folder runs in its copy`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec({ artifactDir: t.artifactDir, bundlePath: join(t.artifactDir, BUNDLE_FILE) }));
    expect(await (await get(handle, "/file")).text()).toBe("data of the version");
    const where = (await (await get(handle, "/where")).json()) as { dir: string; cwd: string };
    expect(where.cwd).toBe(where.dir);
    expect(await (await get(handle, "/write")).text()).toBe("refused");
    expect(await Bun.file(join(t.artifactDir, "data.txt")).text()).toBe("data of the version");
  }, timeout);

  test(`${name}: placing a 5,000-file folder keeps forge's event loop serving`, async () => {
    await using t = await setup();
    const folders = 50;
    const perFolder = 100;
    for (let d = 0; d < folders; d++) {
      const folder = join(t.artifactDir, "assets", `d${d}`);
      await mkdir(folder, { recursive: true });
      await Promise.all(Array.from({ length: perFolder }, (_, i) => writeFile(join(folder, `f${i}.txt`), `${d}/${i}`)));
    }
    const cell = await t.driver.start(
      t.instanceSpec({ role: "cell", function: undefined, version: undefined, bundlePath: undefined, env: {} }),
    );
    // every other tenant's requests wait while the loop is held: a 5 ms timer must keep ticking
    let last = performance.now();
    let longestGap = 0;
    const ticker = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 5);
    let placed: { dir: string; bundle: string };
    try {
      placed = await t.driver.placeArtifact(cell.id, t.artifactDir);
      longestGap = Math.max(longestGap, performance.now() - last);
    } finally {
      clearInterval(ticker);
    }
    expect(longestGap).toBeLessThan(50);
    await specialize(cell, cell.controlToken, { function: "large", version: 1, ...placed, env: {} });
    // the 3 files and lib/ of setup, assets/ and its 50 folders of 100 files
    expect(await (await get(cell, "/count")).text()).toBe(String(4 + 1 + folders * (1 + perFolder)));
    expect(await (await get(cell, "/file")).text()).toBe("data of the version");
  }, timeout);

  test(`${name}: placing a folder for an instance that does not exist fails`, async () => {
    await using t = await setup();
    await expect(t.driver.placeArtifact("never-started", t.artifactDir)).rejects.toBeInstanceOf(ForgeError);
  }, timeout);

  test(`${name}: control routes need the instance's token`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    await expect(health(handle, "not-the-token")).rejects.toBeInstanceOf(ForgeError);
    // Without the token a control path is the function's like any other.
    expect(await (await get(handle, "/__forge/health")).text()).toBe("ok Hello");
  }, timeout);

  test(`${name}: stop makes an instance unreachable, removes it from list() and is idempotent`, async () => {
    await using t = await setup();
    const exits: ExitInfo[] = [];
    t.driver.onExit((info) => exits.push(info));
    const handle = await t.driver.start(t.instanceSpec());
    expect((await t.driver.list()).map((i) => i.id)).toContain(handle.id);
    await t.driver.stop(handle.id);
    const error = await get(handle, "/hello").catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ForgeError);
    expect((error as ForgeError).code).toBe(ErrorCode.InstanceCrashed);
    expect((await t.driver.list()).map((i) => i.id)).not.toContain(handle.id);
    await t.driver.stop(handle.id);
    await t.driver.stop("never-started");
    expect(exits).toEqual([]);
  }, timeout);

  test(`${name}: reports an instance that exits on its own`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    const exited = exitOf(t.driver, handle.id);
    await get(handle, "/exit").then(
      (response) => response.body?.cancel(),
      () => {}, // the connection may drop before an answer: that is the point
    );
    const info = await exited;
    expect(info).toMatchObject({ id: handle.id, code: 3, reason: "exited" });
    const listed = (await t.driver.list()).find((i) => i.id === handle.id);
    if (listed) expect(listed.running).toBe(false);
  }, timeout);

  test(`${name}: reports an instance killed from outside`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    const other = await t.driver.start(t.instanceSpec());
    const exited = exitOf(t.driver, handle.id);
    await options.kill(t.driver, handle);
    const info = await exited;
    expect(info.id).toBe(handle.id);
    expect(info.code).not.toBe(0);
    expect(await (await get(other, "/hello")).text()).toBe("ok Hello");
  }, timeout);

  test(`${name}: tags the function's log lines with the request id`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    const seen = nextEvent<LogLine>(
      (l) => t.driver.onLog(l),
      (line) => line.instance === handle.id && line.text === "hello from /logged",
      "log line",
    );
    await (await get(handle, "/logged", "req-logged-1")).text();
    const line = await seen;
    expect(line).toMatchObject({ instance: handle.id, stream: "stdout", requestId: "req-logged-1" });
    const lines: LogLine[] = [];
    for await (const l of t.driver.logs(handle.id)) lines.push(l);
    expect(lines).toContainEqual(expect.objectContaining({ text: "hello from /logged", requestId: "req-logged-1" }));
  }, timeout);

  test(`${name}: follows logs until aborted, and until the instance exits`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    const abort = new AbortController();
    const collected: LogLine[] = [];
    const arrived = nextEvent<LogLine>(
      (l) => t.driver.onLog(l),
      (line) => line.text === "hello from /followed",
      "followed line",
    );
    const following = (async () => {
      for await (const line of t.driver.logs(handle.id, { follow: true, signal: abort.signal })) collected.push(line);
    })();
    await (await get(handle, "/followed", "req-followed")).text();
    await arrived;
    abort.abort();
    await following;
    expect(collected.map((l) => l.text)).toContain("hello from /followed");

    // Without a signal, a follow ends when the instance does.
    const untilExit = (async () => {
      const texts: string[] = [];
      for await (const line of t.driver.logs(handle.id, { follow: true })) texts.push(line.text);
      return texts;
    })();
    const exited = exitOf(t.driver, handle.id);
    await get(handle, "/exit").then(
      (response) => response.body?.cancel(),
      () => {},
    );
    await exited;
    expect(await untilExit).toContain("hello from /followed");
  }, timeout);

  test(`${name}: keeps concurrent requests' log lines apart`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec({ function: "busy" }));
    const n = 16;
    const lines: LogLine[] = [];
    const all = nextEvent<LogLine>(
      (l) => t.driver.onLog(l),
      (line) => {
        if (line.instance === handle.id) lines.push(line);
        return lines.length === 2 * n;
      },
      "all log lines",
    );
    const bodies = await Promise.all(
      Array.from({ length: n }, (_, i) => get(handle, `/slow?n=${i}`, `req-c-${i}`).then((r) => r.text())),
    );
    expect(bodies).toEqual(Array.from({ length: n }, (_, i) => String(i)));
    await all;
    for (const line of lines) {
      const i = line.text.split(" ")[1];
      expect(line.requestId).toBe(`req-c-${i}`);
    }
  }, timeout);

  test(`${name}: lists started instances with role, function and version`, async () => {
    await using t = await setup();
    const a = await t.driver.start(t.instanceSpec({ function: "alpha", version: 3 }));
    const cell = await t.driver.start(
      t.instanceSpec({ role: "cell", function: undefined, version: undefined, bundlePath: undefined, env: {} }),
    );
    const listed = await t.driver.list();
    expect(listed).toContainEqual({ id: a.id, role: "instance", function: "alpha", version: 3, running: true });
    expect(listed).toContainEqual(expect.objectContaining({ id: cell.id, role: "cell", running: true }));
    expect(listed.find((i) => i.id === cell.id)?.function).toBeUndefined();
  }, timeout);

  test(`${name}: reports the resident memory of its instances and cells, below their limits`, async () => {
    await using t = await setup();
    if (!t.driver.memoryUsage) return;
    const handle = await t.driver.start(t.instanceSpec());
    const cell = await t.driver.start(
      t.instanceSpec({ role: "cell", function: undefined, version: undefined, bundlePath: undefined, env: {} }),
    );
    const usage = await t.driver.memoryUsage();
    for (const id of [handle.id, cell.id]) {
      expect(usage.get(id)).toBeGreaterThan(1 * MIB);
      expect(usage.get(id)).toBeLessThan(256 * MIB);
    }
  }, timeout);

  test(`${name}: an instance's reported memory grows with what its function allocates`, async () => {
    await using t = await setup();
    if (!t.driver.memoryUsage) return;
    const handle = await t.driver.start(t.instanceSpec({ memoryMb: 256 }));
    const before = (await t.driver.memoryUsage()).get(handle.id);
    expect(before).toBeNumber();
    expect(await (await get(handle, "/allocate?mb=80")).text()).toBe("80");
    const after = (await t.driver.memoryUsage()).get(handle.id) ?? 0;
    expect(after - (before ?? 0)).toBeGreaterThanOrEqual(60 * MIB);
    expect(after).toBeLessThan(256 * MIB);
  }, timeout);

  test(`${name}: a stopped instance is no longer in the memory usage`, async () => {
    await using t = await setup();
    if (!t.driver.memoryUsage) return;
    const handle = await t.driver.start(t.instanceSpec());
    const other = await t.driver.start(t.instanceSpec());
    expect([...(await t.driver.memoryUsage()).keys()]).toContain(handle.id);
    await t.driver.stop(handle.id);
    const usage = await t.driver.memoryUsage();
    expect(usage.has(handle.id)).toBe(false);
    expect(usage.has(other.id)).toBe(true);
  }, timeout);

  test(`${name}: a disposed driver stops its instances and refuses to start`, async () => {
    await using t = await setup();
    const handle = await t.driver.start(t.instanceSpec());
    await t.driver.dispose();
    await expect(get(handle, "/hello")).rejects.toBeInstanceOf(ForgeError);
    const error = await t.driver.start(t.instanceSpec()).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ForgeError);
    expect((error as ForgeError).code).toBe(ErrorCode.Disposed);
  }, timeout);
}
