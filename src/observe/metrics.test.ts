/** The Prometheus text: every series of a node carries its id, so several nodes' scrapes stay apart. */
import { expect, test } from "bun:test";
import { Metrics } from "./metrics.ts";

const gauges = { instances: () => [{ labels: { function: "greet", state: "ready" }, value: 2 }], stemCells: () => 1, queueDepth: () => [] };
const record = { id: "r1", function: "greet", version: 1, instance: "i1", start: "warm" as const, kind: "sync" as const, state: "done" as const, status: 200, attempts: 1, queueWaitMs: 0.2, durationMs: 3, bytesIn: 0, bytesOut: 5, payload: null, result: null, error: null, createdAt: 0, updatedAt: 0 };

test("with a node id, every sample is labelled with it; without one, none is", async () => {
  const withNode = new Metrics({ version: "t", driver: "process", gauges, node: "node-a" });
  withNode.observe(record);
  const text = await withNode.render();
  const samples = text.split("\n").filter((l) => l && !l.startsWith("#"));
  expect(samples.length).toBeGreaterThan(20);
  for (const line of samples) expect(line).toMatch(/^[a-z_]+\{node="node-a"[,}]/);
  expect(text).toContain('forge_invocations_total{node="node-a",function="greet",status="200",start="warm"} 1');
  expect(text).toContain('forge_invocation_duration_seconds_count{node="node-a",function="greet"} 1');

  const alone = new Metrics({ version: "t", driver: "process", gauges });
  alone.observe(record);
  expect(await alone.render()).not.toContain("node=");
});
