/**
 * Time from POST /v1/provision to `ready` (the database accepts a login), p50 of N, for the
 * docker and shared backends, against a forge started in this process (in-process queue).
 * Also the time from DELETE to `deleted`.
 *
 *   FORGE_PG_ADMIN_URL=postgres://... bun src/bench/provision.ts [--runs 5] [--backend docker|shared|both] [--json out.json]
 *
 * The docker backend runs FORGE_POSTGRES_IMAGE (forge/postgres:15: `forge images build postgres`);
 * the shared one needs FORGE_PG_ADMIN_URL and is skipped without it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { createConsola } from "consola";
import { loadConfig } from "../config.ts";
import { startServer } from "../server.ts";

interface Job {
  id: string;
  status: string;
  detail?: string;
  created_at: string;
  updated_at: string;
}

interface Result {
  backend: string;
  runs: number;
  /** Client-observed POST -> ready, ms. */
  readyMs: number[];
  /** The job's own created_at -> updated_at at ready, ms. */
  serverMs: number[];
  /** DELETE -> deleted, ms. */
  deleteMs: number[];
  skipped?: string;
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { runs: { type: "string", default: "5" }, backend: { type: "string", default: "both" }, json: { type: "string" } } });
  const runs = Number(values.runs);
  const which = String(values.backend);
  if (!Number.isInteger(runs) || runs < 1 || !["docker", "shared", "both"].includes(which)) {
    process.stderr.write("usage: bun src/bench/provision.ts [--runs 5] [--backend docker|shared|both] [--json out.json]\n");
    return 1;
  }
  const dataDir = mkdtempSync(join(tmpdir(), "forge-bench-provision-"));
  const config = loadConfig(process.env, { port: 0, dataDir, db: join(dataDir, "forge.db"), driver: "process", stemCells: { bun: 0, node: 0 }, apiKey: "bench", redisUrl: undefined });
  const server = await startServer(config, { logger: createConsola({ level: 1 }) });
  const results: Result[] = [];
  try {
    for (const backend of which === "both" ? ["docker", "shared"] : [which]) {
      if (backend === "shared" && !config.pgAdminUrl) {
        results.push({ backend, runs: 0, readyMs: [], serverMs: [], deleteMs: [], skipped: "FORGE_PG_ADMIN_URL is unset" });
        continue;
      }
      const r: Result = { backend, runs, readyMs: [], serverMs: [], deleteMs: [] };
      for (let i = 0; i < runs; i++) {
        const t0 = performance.now();
        const posted = await api(server.url, "POST", "/v1/provision", { service_name: `bench-${i}`, backend });
        const ready = await waitFor(server.url, posted.id, "ready");
        r.readyMs.push(performance.now() - t0);
        r.serverMs.push(Date.parse(ready.updated_at) - Date.parse(ready.created_at));
        const t1 = performance.now();
        await api(server.url, "DELETE", `/v1/provision/${posted.id}`);
        await waitFor(server.url, posted.id, "deleted");
        r.deleteMs.push(performance.now() - t1);
        process.stderr.write(`${backend} run ${i + 1}/${runs}: ready in ${r.readyMs[i]?.toFixed(0)} ms\n`);
      }
      results.push(r);
    }
  } finally {
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
  const rows = [["backend", "runs", "POST->ready p50", "min", "max", "(job's own p50)", "DELETE->deleted p50"]];
  for (const r of results) {
    if (r.skipped) rows.push([r.backend, "-", `skipped: ${r.skipped}`, "", "", "", ""]);
    else rows.push([r.backend, String(r.runs), ms(p50(r.readyMs)), ms(Math.min(...r.readyMs)), ms(Math.max(...r.readyMs)), ms(p50(r.serverMs)), ms(p50(r.deleteMs))]);
  }
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((row) => (row[c] ?? "").length))) ?? [];
  process.stdout.write(`provisioning, image ${config.postgresImage}\n` + rows.map((row) => row.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join("  ")).join("\n") + "\n");
  if (values.json) await Bun.write(values.json, JSON.stringify(results, null, 2) + "\n");
  return 0;
}

async function api(base: string, method: string, path: string, body?: unknown): Promise<Job> {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: "Bearer bench", "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as Job;
}

async function waitFor(base: string, id: string, status: string): Promise<Job> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const job = await api(base, "GET", `/v1/provision/${id}`);
    if (job.status === status) return job;
    if (job.status === "failed") throw new Error(`job ${id} failed: ${job.detail}`);
    if (Date.now() > deadline) throw new Error(`job ${id} still ${job.status} after 120 s`);
    await Bun.sleep(5); // polling interval: bounds the measurement's resolution
  }
}

function p50(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)] ?? NaN;
}

function ms(x: number): string {
  return x >= 1000 ? `${(x / 1000).toFixed(2)} s` : `${x.toFixed(0)} ms`;
}

if (import.meta.main) process.exit(await main());
