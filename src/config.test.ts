import { describe, expect, test } from "bun:test";
import { loadConfig, parseDuration } from "./config.ts";
import { ForgeError } from "./errors.ts";
import { cli } from "../test/_helpers.ts";

describe("config", () => {
  test("defaults", () => {
    const c = loadConfig({});
    expect(c.port).toBe(8080);
    expect(c.host).toBe("127.0.0.1");
    expect(c.domain).toBe("localhost");
    expect(c.driver).toBe("auto");
    expect(c.stemCells).toBe(2);
    expect(c.keepAliveMs).toBe(600_000);
    expect(c.redisUrl).toBeUndefined();
    expect(c.db.endsWith("/.forge/forge.db")).toBe(true);
  });

  test("values are parsed and typed", () => {
    const c = loadConfig({ FORGE_PORT: "0", FORGE_DRIVER: "process", FORGE_KEEP_ALIVE: "30s", FORGE_REDIS_URL: "redis://127.0.0.1:6379", FORGE_MAX_ARCHIVE_MB: "2" });
    expect(c.port).toBe(0);
    expect(c.driver).toBe("process");
    expect(c.keepAliveMs).toBe(30_000);
    expect(c.redisUrl).toBe("redis://127.0.0.1:6379");
    expect(c.maxArchiveBytes).toBe(2 * 1024 * 1024);
  });

  test("every bad value is named with what it accepts, all at once", () => {
    let err: unknown;
    try {
      loadConfig({ FORGE_PORT: "eighty", FORGE_DRIVER: "kubernetes", FORGE_KEEP_ALIVE: "forever", FORGE_REDIS_URL: "http://x" });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ForgeError);
    const msg = (err as ForgeError).message;
    expect(msg).toContain('FORGE_PORT="eighty": expected a whole number from 0 to 65535');
    expect(msg).toContain("FORGE_DRIVER=\"kubernetes\": expected one of auto, docker, process");
    expect(msg).toContain("FORGE_KEEP_ALIVE");
    expect(msg).toContain("FORGE_REDIS_URL");
    expect((err as ForgeError).hint).toBeTruthy();
  });

  test("durations", () => {
    expect(parseDuration("250ms")).toBe(250);
    expect(parseDuration("10s")).toBe(10_000);
    expect(parseDuration("5m")).toBe(300_000);
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(parseDuration("1.5s")).toBe(1500);
    expect(parseDuration("12")).toBe(12);
    expect(parseDuration("soon")).toBeUndefined();
  });

  test("forge up with a bad setting stops with a message naming it", async () => {
    const r = await cli(undefined, ["up"], { FORGE_STEM_CELLS: "lots", FORGE_DATA_DIR: "/tmp/forge-never-created" });
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain("FORGE_STEM_CELLS");
  });
});
