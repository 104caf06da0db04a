import { describe, expect, test } from "bun:test";
import { isPostgresUrl, loadConfig, parseDuration, parseStemCells } from "./config.ts";
import { ForgeError } from "./errors.ts";
import { cli } from "../test/_helpers.ts";

describe("config", () => {
  test("defaults", () => {
    const c = loadConfig({});
    expect(c.port).toBe(8080);
    expect(c.host).toBe("127.0.0.1");
    expect(c.domain).toBe("localhost");
    expect(c.driver).toBe("auto");
    expect(c.stemCells).toEqual({ bun: { min: 2, max: 8 }, node: { min: 1, max: 2 } });
    expect(c.memoryBudgetDefault).toBe(true);
    expect(c.memoryBudgetMb).toBeGreaterThanOrEqual(256);
    expect(c.memoryAccounting).toBe("measured");
    expect(c.keepAlivePolicy).toBe("fixed");
    expect(c.policyMinuteMs).toBe(60_000);
    expect(c.nodeBin).toBe("node");
    expect(c.keepAliveMs).toBe(600_000);
    expect(c.redisUrl).toBeUndefined();
    expect(c.db.endsWith("/.forge/forge.db")).toBe(true);
  });

  test("FORGE_STEM_CELLS: counts per runtime, or one number for every runtime", () => {
    expect(parseStemCells("bun=2,node=1")).toEqual({ bun: 2, node: 1 });
    expect(parseStemCells(" node = 3 ")).toEqual({ bun: 0, node: 3 });
    expect(parseStemCells("0")).toEqual({ bun: 0, node: 0 });
    expect(parseStemCells("4")).toEqual({ bun: 4, node: 4 });
    expect(parseStemCells("bun=2..8,node=1")).toEqual({ bun: { min: 2, max: 8 }, node: 1 });
    expect(parseStemCells(" 1 .. 4 ")).toEqual({ bun: { min: 1, max: 4 }, node: { min: 1, max: 4 } });
    for (const bad of ["", "bun", "bun=", "bun=1,bun=2", "python=1", "bun=65", "65", "-1", "bun=1;node=1", "bun=4..2", "bun=1..65", "1..", "..2", "bun=1...2"]) expect(parseStemCells(bad)).toBeUndefined();
    expect(loadConfig({ FORGE_STEM_CELLS: "bun=1" }).stemCells).toEqual({ bun: 1, node: 0 });
    expect(() => loadConfig({ FORGE_STEM_CELLS: "ruby=1" })).toThrow(/FORGE_STEM_CELLS="ruby=1": expected counts or ranges per runtime/);
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

  test("FORGE_EGRESS_NETWORK: forge-egress by default, none turns egress off, a name must fit a bridge device", () => {
    expect(loadConfig({}).egressNetwork).toBe("forge-egress");
    expect(loadConfig({ FORGE_EGRESS_NETWORK: "none" }).egressNetwork).toBeUndefined();
    expect(loadConfig({ FORGE_EGRESS_NETWORK: "fn-out" }).egressNetwork).toBe("fn-out");
    for (const bad of ["forge-egress-network", "Forge", "-x", "a_b"]) expect(() => loadConfig({ FORGE_EGRESS_NETWORK: bad })).toThrow(/FORGE_EGRESS_NETWORK/);
  });

  test("several nodes: FORGE_DB as a postgres:// URL needs FORGE_REDIS_URL; node id, URL, heartbeat and reconcile periods", () => {
    const pg = "postgres://forge:pw@db:5432/forge";
    expect(() => loadConfig({ FORGE_DB: pg })).toThrow(/FORGE_DB is a postgres:\/\/ URL .*FORGE_REDIS_URL is unset/);
    const c = loadConfig({ FORGE_DB: pg, FORGE_REDIS_URL: "redis://r:6379", FORGE_NODE_ID: "node-a", FORGE_NODE_URL: "http://10.0.0.5:8080", FORGE_HEARTBEAT: "250ms", FORGE_RECONCILE: "2s" });
    expect([isPostgresUrl(c.db), c.nodeId, c.nodeUrl, c.heartbeatMs, c.reconcileMs]).toEqual([true, "node-a", "http://10.0.0.5:8080", 250, 2000]);
    expect(isPostgresUrl(loadConfig({}).db)).toBe(false);
    expect(loadConfig({}).nodeId).toBeUndefined();
    expect(() => loadConfig({ FORGE_NODE_ID: "Node A" })).toThrow(/FORGE_NODE_ID="Node A": expected lowercase letters/);
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
