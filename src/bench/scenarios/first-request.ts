/**
 * First requests of functions with no instance (minWarm 0, the instance that verified the
 * deploy retired, as after the keep-alive): a true cold start when no stem cell is ready, a
 * cell start when one is. Each
 * sample is a new function; the gateway's x-forge-start header says which kind it was, so
 * a sample is never filed under the wrong scenario (a running forge may have cells or not).
 */
import { Histogram } from "../histogram.ts";
import { latencyFields, type ScenarioResult } from "../report.ts";
import { deleteFunction, deployFunction, timedRequest, waitFor, type BenchTarget, type SuiteContext } from "./_shared.ts";

export const COLD = { name: "forge-cold", title: "forge true cold start: no stem cell, a new instance started for the first request" } as const;
export const CELL = { name: "forge-cell", title: "forge cell start: a ready stem cell specialized for the first request" } as const;
export const CELL_NODE = { name: "forge-cell-node", title: "forge cell start on runtime node: a ready node stem cell specialized for the first request" } as const;

export type FirstRequestKind = "cold" | "cell";

/**
 * Measures `samples` first requests. `want` says what this forge should give (cold: it has
 * no cells; cell: wait for a ready cell before each sample, when the pool is in reach).
 */
export async function firstRequests(ctx: SuiteContext, target: BenchTarget, want: FirstRequestKind | "either", runtime: "bun" | "node" = "bun"): Promise<ScenarioResult[]> {
  const by: Record<FirstRequestKind, Histogram> = { cold: new Histogram(), cell: new Histogram() };
  let errors = 0;
  let warm = 0;
  const statuses: Record<string, number> = {};
  // Every function is deployed first: a deploy keeps the instance it verified the version
  // with (its first request is warm), so those are retired, as the keep-alive would, and
  // their stops are over before the first sample is timed.
  const names = Array.from({ length: ctx.settings.samples }, (_, i) => `${ctx.prefix}${want === "either" ? "first" : want}-${runtime === "node" ? "node-" : ""}${i}`);
  const pool = target.pool;
  try {
    const deployed = [];
    for (const name of names) {
      deployed.push(await deployFunction(target, name, { minWarm: 0 }, runtime));
      pool?.retireIdle(name);
    }
    if (pool) await waitFor(() => pool.stats().stopping === 0, "the retired instances stopped");
    for (const fn of deployed) {
      // A ready cell and no refill under way: the first request of a function on an idle forge.
      if (want === "cell" && pool) await waitFor(() => (pool.stats().cellsByRuntime[runtime] ?? 0) > 0 && pool.stats().cellsStarting === 0, `a ready ${runtime} stem cell`);
      const r = await timedRequest(target, fn.host);
      if (r.status !== 200) {
        errors++;
        statuses[r.status] = (statuses[r.status] ?? 0) + 1;
        continue;
      }
      if (r.start === "cold" || r.start === "cell") by[r.start].record(r.us);
      else warm++;
    }
  } finally {
    for (const name of names) await deleteFunction(target, name, ctx.logger);
  }
  const out: ScenarioResult[] = [];
  for (const kind of want === "either" ? (["cold", "cell"] as const) : [want]) {
    const meta = kind === "cold" ? COLD : runtime === "node" ? CELL_NODE : CELL;
    const h = by[kind];
    const result: ScenarioResult = {
      ...meta,
      kind: "first-request",
      ...latencyFields(h),
      errors,
      ...(errors ? { errorsByStatus: statuses } : {}),
      ...(warm ? { extra: { "warm-already": warm } } : {}),
    };
    if (h.count === 0 && errors === 0) {
      result.skipped = kind === "cold" ? "every first request found a ready stem cell (no true cold start happened)" : "no stem cell was ready for any first request";
    }
    out.push(result);
  }
  return out;
}
