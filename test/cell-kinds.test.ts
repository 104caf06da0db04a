/**
 * Stem cells per network set (src/pool/pool-manager.ts, retarget): a function whose networks
 * differ from the default ones (bound to a database, or "network": "none" on docker) gets a
 * cell of its own kind. Once nothing needs that kind (its functions deleted), its cells stop:
 * they hold memory of the budget and, on docker, an endpoint on a database's network (which
 * `forge db delete` could not remove while it is there).
 */
import { expect, test } from "bun:test";
import { createConsola } from "consola";
import { FakeClock } from "../src/pool/clock.ts";
import { createFakeDriver } from "../src/pool/fake-driver.ts";
import { fixedKeepAlive } from "../src/pool/keep-alive.ts";
import { PoolManager } from "../src/pool/pool-manager.ts";
import type { PoolSpec } from "../src/pool/types.ts";
import { until } from "./_helpers.ts";

const quiet = createConsola({ level: -999 });

function spec(fn: string, networks: string[]): PoolSpec {
  return {
    function: fn,
    version: 1,
    runtime: "node",
    concurrency: 8,
    minWarm: 0,
    maxInstances: 10,
    memoryMb: 128,
    timeoutMs: 30_000,
    env: {},
    bundlePath: `/bundles/${fn}.mjs`,
    networks,
  };
}

test("deleting the functions of a network set stops the cells kept for that set", async () => {
  const driver = createFakeDriver({});
  const pool = new PoolManager({
    driver,
    logger: quiet,
    clock: new FakeClock(),
    stemCells: { node: 1 },
    memoryBudgetMb: 1_000_000,
    keepAlive: fixedKeepAlive(60_000),
    readBundle: async () => "export default { fetch() { return new Response('x') } }",
  });
  pool.start();
  try {
    await until(() => pool.stats().cells === 1, 5000, "the default node cell");
    // Three functions, each bound to its own database network, deployed then deleted.
    for (const db of ["db-a", "db-b", "db-c"]) {
      await pool.activate(spec(`fn-${db}`, [`forge-db-${db}`]));
      // Its own cell kind is filled (the default cell, plus one on its networks).
      await until(() => pool.stats().cells >= 2 && pool.stats().cellsStarting === 0, 5000, `the cell kept for ${db}'s network set`);
      await pool.remove(`fn-${db}`);
    }
    await until(async () => (await driver.list()).filter((i) => i.role === "cell" && i.running).length === 1, 5000, "the cells of dropped kinds to stop");
    const cells = (await driver.list()).filter((i) => i.role === "cell" && i.running);
    // Only the configured cell is left.
    expect({ cells: cells.length, stats: pool.stats().cells }).toEqual({ cells: 1, stats: 1 });
  } finally {
    await pool.dispose();
    await driver.dispose();
  }
}, 20_000);
