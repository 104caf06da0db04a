import { describe, expect, test } from "bun:test";
import { ErrorCode, ForgeError } from "../errors.ts";
import { contractBundleEmulation, driverContract } from "./driver.case.ts";
import type { InstanceSpec } from "./driver.ts";
import { createFakeDriver } from "./fake-driver.ts";
import { forward, health, specialize } from "./instance-client.ts";

driverContract("fake", async () => createFakeDriver({ handler: contractBundleEmulation }), {
  kill: (driver, handle) => driver.crash(handle.id),
});

const spec = (overrides: Partial<InstanceSpec> = {}): InstanceSpec => ({
  id: `f${crypto.randomUUID().slice(0, 8)}`,
  role: "instance",
  runtime: "bun",
  function: "greet",
  version: 1,
  env: {},
  memoryMb: 128,
  ...overrides,
});

describe("fake driver", () => {
  test("answers with the default handler and counts starts and stops", async () => {
    await using driver = createFakeDriver();
    const handle = await driver.start(spec({ id: "one" }));
    const response = await forward(handle, new Request("http://x/"), "r");
    expect(await response.json()).toEqual({ instance: "one", function: "greet", version: 1 });
    expect(driver.started).toBe(1);
    expect(driver.live()).toEqual(["one"]);
    await driver.stop("one");
    await driver.stop("one");
    expect(driver.stopped).toBe(1);
    expect(driver.live()).toEqual([]);
  });

  test("holds a start until the test lets it go", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    await using driver = createFakeDriver({ startDelayMs: () => gate });
    let done = false;
    const starting = driver.start(spec()).then((h) => {
      done = true;
      return h;
    });
    await Promise.resolve();
    expect(done).toBe(false);
    expect(driver.started).toBe(0);
    release();
    const handle = await starting;
    expect((await health(handle)).ok).toBe(true);
    expect(driver.started).toBe(1);
  });

  test("a held start rejects when its signal aborts", async () => {
    await using driver = createFakeDriver({ startDelayMs: () => new Promise(() => {}) });
    const abort = new AbortController();
    const starting = driver.start(spec(), abort.signal);
    abort.abort(new Error("gave up"));
    await expect(starting).rejects.toThrow("gave up");
  });

  test("failStart makes a start fail", async () => {
    await using driver = createFakeDriver({ failStart: (s) => s.id === "bad" });
    const error = await driver.start(spec({ id: "bad" })).catch((err: unknown) => err);
    expect((error as ForgeError).code).toBe(ErrorCode.InstanceStartFailed);
    await driver.start(spec({ id: "good" }));
    expect(driver.live()).toEqual(["good"]);
  });

  test("records specializations and memory changes", async () => {
    await using driver = createFakeDriver();
    const cell = await driver.start(spec({ id: "cell", role: "cell", function: undefined, version: undefined }));
    await specialize(cell, cell.controlToken, { function: "late", version: 4, code: "export default 1", env: { A: "1" } });
    expect(driver.specialization("cell")).toMatchObject({ function: "late", version: 4, env: { A: "1" } });
    const response = await forward(cell, new Request("http://x/"), "r");
    expect(await response.json()).toEqual({ instance: "cell", function: "late", version: 4 });
    await driver.setMemory?.("cell", 512);
    expect(driver.memoryOf("cell")).toBe(512);
  });

  test("crash fires onExit and leaves the instance listed as not running", async () => {
    await using driver = createFakeDriver();
    const exits: string[] = [];
    driver.onExit((info) => exits.push(info.id));
    await driver.start(spec({ id: "doomed" }));
    await driver.crash("doomed");
    expect(exits).toEqual(["doomed"]);
    expect(driver.live()).toEqual([]);
    expect(await driver.list()).toEqual([{ id: "doomed", role: "instance", function: "greet", version: 1, running: false }]);
    expect(driver.handle("doomed")).toBeDefined();
  });

  test("a disposed fake refuses to start", async () => {
    const driver = createFakeDriver();
    await driver.dispose();
    await expect(driver.start(spec())).rejects.toBeInstanceOf(ForgeError);
  });
});
