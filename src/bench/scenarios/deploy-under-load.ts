/**
 * A deploy in the middle of a steady load: the new version's pool is warmed before traffic
 * moves and the old one drains, so no request may fail. Runs a closed-loop load, deploys
 * version 2 once a share of the requests are done, then keeps the load on for as many
 * requests again after the switch; counts failures and which version answered last.
 */
import { runLoadInWorker } from "../load.ts";
import { loadScenario, type ScenarioResult } from "../report.ts";
import { deleteFunction, deployFunction, type BenchTarget, type SuiteContext } from "./_shared.ts";

export const DEPLOY = { name: "deploy-under-load", title: "a new version deployed during a steady load (failed requests counted)" } as const;

export async function deployUnderLoad(ctx: SuiteContext, target: BenchTarget): Promise<ScenarioResult> {
  const name = `${ctx.prefix}steady`;
  const fn = await deployFunction(target, name, { minWarm: 1, concurrency: 8 });
  const concurrency = Math.min(ctx.settings.concurrency, 8);
  const phase = Math.max(50, Math.floor(ctx.settings.requests / 4));
  try {
    const stop = new AbortController();
    let deploy: Promise<number> | undefined;
    let switchedAt: number | undefined;
    let deployError: unknown;
    let completed = 0;
    const load = runLoadInWorker({
      url: `${target.url}/`,
      headers: { host: fn.host },
      concurrency,
      durationMs: 120_000,
      timeoutMs: 30_000,
      signal: stop.signal,
      progressEveryMs: 10,
      ...(ctx.progressTo ? { progressTo: ctx.progressTo } : {}),
      onProgress: (p) => {
        completed = p.completed;
        if (!deploy && p.completed >= phase) {
          const t0 = performance.now();
          deploy = deployFunction(target, name, { minWarm: 1, concurrency: 8, env: { BENCH_VERSION: "2" } }).then(
            () => {
              switchedAt = completed;
              return performance.now() - t0;
            },
            (err: unknown) => {
              deployError = err;
              stop.abort();
              return 0;
            },
          );
        }
        if (switchedAt !== undefined && p.completed >= switchedAt + phase) stop.abort();
      },
    });
    const r = await load;
    const deployMs = (await deploy) ?? 0;
    if (deployError) throw deployError;
    if (!deploy) throw new Error("the load ended before the deploy started");
    const last = await fetch(`${target.url}/`, { headers: { host: fn.host } }).then((res) => res.text());
    return {
      ...loadScenario(DEPLOY.name, DEPLOY.title, r, { "deploy-ms": Math.round(deployMs), "answered-by": last.includes("ok 2") ? "v2" : "v1" }),
      kind: "deploy",
    };
  } finally {
    await deleteFunction(target, name, ctx.logger);
  }
}
