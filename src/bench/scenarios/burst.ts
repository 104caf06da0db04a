/**
 * A burst of N concurrent requests at a function with no instance: the autoscaler should
 * start what the burst asks for (ceil(N / concurrency) instances, from cells first) and
 * no more. Latency is each request's, from the burst's start; instances are counted after.
 */
import { runLoadInWorker } from "../load.ts";
import { loadScenario, type ScenarioResult } from "../report.ts";
import { deleteFunction, deployFunction, info, type BenchTarget, type SuiteContext } from "./_shared.ts";

export const BURST = { name: "burst", title: "a burst of concurrent requests at a cold function (instances counted after)" } as const;

/** Slots per instance of the burst's function. */
const CONCURRENCY = 8;

export async function burst(ctx: SuiteContext, target: BenchTarget): Promise<ScenarioResult> {
  const n = ctx.settings.burst;
  const name = `${ctx.prefix}burst`;
  const expected = Math.ceil(n / CONCURRENCY);
  const fn = await deployFunction(target, name, { minWarm: 0, concurrency: CONCURRENCY, maxInstances: Math.max(10, expected) });
  try {
    // One request per worker, all at once: each opens its connection and sends.
    const r = await runLoadInWorker({ url: `${target.url}/`, headers: { host: fn.host }, concurrency: n, requests: n, timeoutMs: 60_000, progressEveryMs: 0 });
    const after = await info(target, name);
    const started = after.pool?.instances ?? [];
    const instances = started.length;
    if (instances > expected) ctx.notes.push(`burst: ${instances} instances started for ${n} requests, more than the ${expected} the burst needs`);
    return {
      ...loadScenario(BURST.name, BURST.title, r, { burst: n, instances, expected, "from-cells": started.filter((i) => i.origin === "cell").length, "cold-started": started.filter((i) => i.origin === "cold").length }),
      kind: "burst",
    };
  } finally {
    await deleteFunction(target, name, ctx.logger);
  }
}
