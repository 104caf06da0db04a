/**
 * Cold start on Docker, medians of one run with the variants interleaved:
 *
 * - docker driver cold: create + start a hardened container of the function's image and
 *   wait for its first response over the socket (what forge pays when no stem cell is left);
 * - plain `docker run`: the docker CLI running the same image with a port published on
 *   127.0.0.1, until its first response there (the baseline of ENVIRONMENT.md);
 * - stem cell: specialize an already running generic container over its socket and get the
 *   first response (what forge pays on a first request while a cell is free).
 *
 *   bun src/bench/docker-cold-start.ts [--samples 10]
 */
import { rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import { createConsola } from "consola";
import { createDockerDriver, forward, specialize } from "../pool/index.ts";
import { BENCH_BUNDLE, benchEngine, benchImage, freePort, removeBenchImage, row, summarize } from "./_docker-bench.ts";

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { samples: { type: "string", default: "10" } } });
  const samples = Number(values.samples);
  if (!Number.isInteger(samples) || samples < 1) {
    process.stderr.write("usage: bun src/bench/docker-cold-start.ts [--samples 10]\n");
    return 1;
  }
  const engine = await benchEngine();
  const { docker } = engine;
  const name = "bench-cold";
  const image = await benchImage(engine, name);
  const driver = createDockerDriver({ docker, dataDir: engine.dir, runtimeImage: engine.runtimeImage, logger: createConsola({ level: -999 }), stopGraceSec: 1 });
  const results = { driver: [] as number[], dockerRun: [] as number[], cell: [] as number[] };
  try {
    const first = async (handle: Parameters<typeof forward>[0]) => {
      const response = await forward(handle, new Request("http://bench/"), "r1");
      if ((await response.text()) !== "ok") throw new Error("unexpected answer");
    };
    // One untimed round of each, so image layers and binaries are in the page cache.
    await driver.stop((await driver.start({ id: "warmup", role: "instance", runtime: "bun", function: name, version: 1, image, bundlePath: engine.bundlePath, env: {}, memoryMb: 128 })).id);

    for (let i = 0; i < samples; i++) {
      process.stderr.write(`sample ${i + 1}/${samples}\n`);
      // docker driver, true cold start
      {
        const t0 = performance.now();
        const handle = await driver.start({ id: `cold${i}`, role: "instance", runtime: "bun", function: name, version: 1, image, bundlePath: engine.bundlePath, env: {}, memoryMb: 128 });
        await first(handle);
        results.driver.push(performance.now() - t0);
        await driver.stop(handle.id);
      }
      // plain docker run of the same image, first response on a published port
      {
        const port = freePort();
        const t0 = performance.now();
        const run = Bun.spawn(["docker", "run", "-d", "--rm", "-p", `127.0.0.1:${port}:8080`, "-e", "PORT=8080", image], { stdout: "pipe", stderr: "pipe" });
        const id = (await new Response(run.stdout).text()).trim();
        if ((await run.exited) !== 0) throw new Error(`docker run failed: ${await new Response(run.stderr).text()}`);
        for (;;) {
          const ok = await fetch(`http://127.0.0.1:${port}/`).then((r) => r.text().then((t) => t === "ok"), () => false);
          if (ok) break;
          await Bun.sleep(1); // polling for the first response is what is measured
        }
        results.dockerRun.push(performance.now() - t0);
        await docker.getContainer(id).remove({ force: true }).catch(() => {});
      }
      // a stem cell started beforehand (untimed), specialized on the first request
      {
        const cell = await driver.start({ id: `cell${i}`, role: "cell", runtime: "bun", env: {}, memoryMb: 128 });
        const t0 = performance.now();
        await specialize(cell, cell.controlToken, { function: name, version: 1, code: BENCH_BUNDLE, env: {} });
        await first(cell);
        results.cell.push(performance.now() - t0);
        await driver.stop(cell.id);
      }
    }
    const widths = [56, 10, 10, 10];
    const line = (label: string, samplesMs: number[]) => {
      const s = summarize(samplesMs);
      return row([label, s.median.toFixed(1), s.p90.toFixed(1), s.min.toFixed(1)], widths);
    };
    const d = summarize(results.driver).median;
    const r = summarize(results.dockerRun).median;
    process.stdout.write(
      [
        `first response of a new instance on Docker (${samples} samples each, interleaved), milliseconds`,
        row(["path", "median", "p90", "min"], widths),
        line("docker driver: create + start + first response", results.driver),
        line("plain `docker run` -p 127.0.0.1 until first response", results.dockerRun),
        line("stem cell: specialize over the socket + first response", results.cell),
        `driver cold / docker run median: ${(d / r).toFixed(2)}`,
      ].join("\n") + "\n",
    );
    return 0;
  } finally {
    await driver.dispose();
    await removeBenchImage(engine, name);
    await rm(engine.dir, { recursive: true, force: true });
  }
}

if (import.meta.main) process.exit(await main());
