/**
 * Deploy-to-live: from `forge deploy <dir>` until the function's first 200, on a forge this
 * script starts (a fresh data dir per run). `--root` points at another checkout of forge so
 * two versions are measured with their own CLI and server on the same machine, in one run.
 *
 *   bun src/bench/deploy-to-live.ts --dir examples/hello [--dir /path/to/fn]... [--driver process|docker]
 *     [--rounds 5] [--root /path/to/other/forge] [--path /] [--json out.json]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { median, startForgeChild } from "./_forge-process.ts";

interface Result {
  dir: string;
  rounds: number[];
  medianMs: number;
  /** Of the median: the CLI's part (pack, bundle, upload, build, verify) and the first request's. */
  deployMs: number[];
  firstRequestMs: number[];
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      dir: { type: "string", multiple: true },
      driver: { type: "string", default: "process" },
      rounds: { type: "string", default: "5" },
      root: { type: "string" },
      path: { type: "string", default: "/" },
      json: { type: "string" },
    },
  });
  const dirs = (values.dir ?? []).map((d) => resolve(d));
  const rounds = Number(values.rounds);
  if (dirs.length === 0 || !Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write("usage: bun src/bench/deploy-to-live.ts --dir DIR [--dir DIR]... [--driver process|docker] [--rounds 5] [--root CHECKOUT]\n");
    return 1;
  }
  const root = resolve(values.root ?? join(import.meta.dir, "../.."));
  const dataDir = mkdtempSync(join(tmpdir(), "forge-d2l-"));
  const forge = await startForgeChild({ FORGE_DATA_DIR: dataDir, FORGE_DRIVER: values.driver ?? "process", FORGE_STEM_CELLS: "2" }, root);
  const results: Result[] = [];
  try {
    for (const dir of dirs) {
      const result: Result = { dir, rounds: [], medianMs: NaN, deployMs: [], firstRequestMs: [] };
      for (let i = 0; i < rounds; i++) {
        const name = `d2l-${basename(dir).toLowerCase().replace(/[^a-z0-9-]/g, "").slice(0, 40) || "fn"}-${i}`;
        const t0 = performance.now();
        const deploy = Bun.spawn([process.execPath, join(root, "src/cli/main.ts"), "deploy", dir, "--name", name], {
          cwd: root,
          env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", FORGE_URL: forge.url, FORGE_API_KEY: forge.key, NO_COLOR: "1" },
          stdout: "ignore",
          stderr: "pipe",
        });
        const [code, stderr] = await Promise.all([deploy.exited, new Response(deploy.stderr).text()]);
        if (code !== 0) throw new Error(`deploy of ${dir} failed: ${stderr}`);
        const t1 = performance.now();
        const r = await fetch(`${forge.url}${values.path}`, { headers: { host: `${name}.localhost:${forge.port}` } });
        await r.arrayBuffer();
        if (r.status !== 200) throw new Error(`${name} answered ${r.status}`);
        const t2 = performance.now();
        result.rounds.push(t2 - t0);
        result.deployMs.push(t1 - t0);
        result.firstRequestMs.push(t2 - t1);
      }
      result.medianMs = median(result.rounds);
      results.push(result);
    }
  } finally {
    forge.proc.kill("SIGTERM");
    await forge.proc.exited;
    rmSync(dataDir, { recursive: true, force: true });
  }
  console.log(`deploy-to-live, ${values.driver} driver, ${rounds} rounds, forge at ${root}`);
  console.log("function".padEnd(40) + "median ms".padStart(11) + "deploy ms".padStart(11) + "1st req ms".padStart(12));
  for (const r of results) {
    console.log(basename(r.dir).padEnd(40) + r.medianMs.toFixed(0).padStart(11) + median(r.deployMs).toFixed(0).padStart(11) + median(r.firstRequestMs).toFixed(1).padStart(12));
  }
  if (values.json) await Bun.write(values.json, JSON.stringify(results, null, 2));
  return 0;
}

process.exit(await main());
