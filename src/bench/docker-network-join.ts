/**
 * Can a stem cell change networks when it is specialized, within a cell start's budget
 * (10 ms p50)? On the real engine, with cells as the docker driver starts them:
 *
 * - a cell started with no network (NetworkMode none) cannot join one at all: the engine
 *   refuses ("cannot be connected to multiple networks with one of the networks in private
 *   (none) mode"), so checked once and reported;
 * - a cell started on forge's egress network joins a database's internal network (what a
 *   function bound to a database would need) and leaves the egress network (what a function
 *   with "network": "none" would need): both timed;
 * - against a cell started where the function needs it (nothing to do at specialization),
 *   and what starting on the network costs the cell itself (background: the refill).
 *
 *   bun src/bench/docker-network-join.ts [--runs 10] [--network forge-egress]
 */
import { rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import { createConsola } from "consola";
import { createDockerDriver } from "../pool/index.ts";
import { benchEngine, row, summarize } from "./_docker-bench.ts";

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { runs: { type: "string", default: "10" }, network: { type: "string", default: "forge-egress" } } });
  const runs = Number(values.runs);
  const network = values.network;
  if (!Number.isInteger(runs) || runs < 1) {
    process.stderr.write("usage: bun src/bench/docker-network-join.ts [--runs 10] [--network forge-egress]\n");
    return 1;
  }
  const engine = await benchEngine();
  const { docker } = engine;
  const driver = createDockerDriver({ docker, dataDir: engine.dir, runtimeImage: engine.runtimeImage, egressNetwork: network, logger: createConsola({ level: -999 }) });
  const cleanups: (() => Promise<unknown>)[] = [];
  try {
    const egress = await driver.prepareEgress();
    if (!egress) throw new Error("no egress network");
    // Stands for a bound database's network (internal, as the provisioner makes them).
    const dbNetwork = `forge-bench-db-${process.pid}`;
    await docker.createNetwork({ Name: dbNetwork, Internal: true, Labels: { "dev.forge.managed": "true", "dev.forge.role": "bench" } });
    cleanups.push(() => docker.getNetwork(dbNetwork).remove());
    const startNone: number[] = [];
    const startOnNetwork: number[] = [];
    const connect: number[] = [];
    const disconnect: number[] = [];
    const cell = (id: string, networks: string[]) => ({ id, role: "cell" as const, runtime: "bun" as const, env: {}, memoryMb: 128, networks });
    // One of each first, untimed: image layers and the engine's caches warm.
    for (const id of ["warmnone", "warmnet"]) {
      await driver.start(cell(id, id === "warmnet" ? [network] : []));
      await driver.stop(id);
    }
    // A cell with no network cannot join one: said once.
    const bare = await driver.start(cell("netbare", []));
    const refusal = await docker
      .getNetwork(network)
      .connect({ Container: driver.containersOf(bare.id)[0] ?? "" })
      .then(
        () => "joined (the engine allowed it)",
        (err: unknown) => `refused: ${(err as { json?: { message?: string } }).json?.message ?? String(err)}`,
      );
    await driver.stop(bare.id);
    for (let i = 0; i < runs; i++) {
      let t0 = performance.now();
      const none = await driver.start(cell(`netnone${i}`, []));
      startNone.push(performance.now() - t0);
      await driver.stop(none.id);

      // A default cell (on the egress network), changed as specialization would change it.
      t0 = performance.now();
      const placed = await driver.start(cell(`netcell${i}`, [network]));
      startOnNetwork.push(performance.now() - t0);
      const [container] = driver.containersOf(placed.id);
      if (!container) throw new Error("the cell has no container");
      t0 = performance.now();
      await docker.getNetwork(dbNetwork).connect({ Container: container });
      connect.push(performance.now() - t0);
      t0 = performance.now();
      await docker.getNetwork(network).disconnect({ Container: container });
      disconnect.push(performance.now() - t0);
      await driver.stop(placed.id);
    }
    const widths = [52, 8, 8, 8];
    const line = (what: string, samples: number[]) => {
      const s = summarize(samples);
      return row([what, s.median.toFixed(1), s.p90.toFixed(1), s.min.toFixed(1)], widths);
    };
    const join = summarize(connect);
    const out = [
      `stem cells and networks (${runs} runs each, interleaved), milliseconds; egress network ${network}`,
      row(["step", "p50", "p90", "min"], widths),
      line("running cell on egress: connect a database network", connect),
      line("running cell on egress: disconnect egress", disconnect),
      line("cell start, no network (background refill)", startNone),
      line("cell start, on egress (background refill)", startOnNetwork),
      `a cell with no network joining one: ${refusal}`,
      `a cell started on the networks a function needs adds 0 ms at specialization; a join there adds ${join.median.toFixed(1)} ms p50 ` +
        `(${join.median <= 10 ? "within" : "past"} the 10 ms cell-start goal on its own), a leave ${summarize(disconnect).median.toFixed(1)} ms`,
    ];
    process.stdout.write(out.join("\n") + "\n");
    return 0;
  } finally {
    await driver.dispose();
    for (const cleanup of cleanups) await cleanup().catch(() => {});
    await rm(engine.dir, { recursive: true, force: true });
  }
}

if (import.meta.main) process.exit(await main());
