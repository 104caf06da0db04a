/**
 * `npm run bench:process`: first-request latency of just-deployed functions (true cold and
 * cell start) and warm latency through the gateway, on the process driver, with forge
 * started in this process. The suite's scenarios, a subset of `forge bench suite`.
 *
 *   bun src/bench/first-request.ts [--samples 20] [--requests 5000] [--concurrency 16] [--json out.json]
 */
import { parseArgs } from "node:util";
import { formatReport } from "./report.ts";
import { runSuite } from "./suite.ts";

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      samples: { type: "string", default: "20" },
      requests: { type: "string", default: "5000" },
      concurrency: { type: "string", default: "16" },
      json: { type: "string" },
    },
  });
  const samples = Number(values.samples);
  const requests = Number(values.requests);
  const concurrency = Number(values.concurrency);
  if (![samples, requests, concurrency].every((n) => Number.isInteger(n) && n >= 1)) {
    process.stderr.write("usage: bun src/bench/first-request.ts [--samples 20] [--requests 5000] [--concurrency 16] [--json out.json]\n");
    return 1;
  }
  const report = await runSuite({
    driver: "process",
    samples,
    requests,
    concurrency,
    only: ["forge-cold", "forge-cell", "warm-gateway"],
    progressTo: process.stderr,
  });
  process.stdout.write(formatReport(report) + "\n");
  if (values.json) await Bun.write(values.json, JSON.stringify(report, null, 2) + "\n");
  return report.scenarios.some((s) => s.error) ? 1 : 0;
}

if (import.meta.main) process.exit(await main());
