import { defineCommand } from "citty";
import { ago, client, jsonArg, output, table, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "info", description: "a function's version, config, instances and stats" },
  args: { name: { type: "positional", required: true, description: "function name" }, ...jsonArg },
  async run({ args }) {
    const f = await client().info(String(args.name));
    output(Boolean(args.json), f, () => {
      const c = f.config;
      ui.log(`${f.name}  v${f.version}  ${f.url}`);
      ui.log(`config: concurrency ${c.concurrency}, minWarm ${c.minWarm}, maxInstances ${c.maxInstances}, memory ${c.memoryMb} MiB, timeout ${c.timeoutMs} ms`);
      for (const w of [f.stats?.last5m, f.stats?.last60m]) {
        if (!w) continue;
        const ms = (v: number | null): string => (v === null ? "-" : `${v.toFixed(1)} ms`);
        ui.log(
          `last ${w.windowMinutes}m: ${w.count} requests, p50 ${ms(w.p50Ms)}, p95 ${ms(w.p95Ms)}, p99 ${ms(w.p99Ms)}, errors ${(w.errorRate * 100).toFixed(1)}%, cold starts ${(w.coldStartRate * 100).toFixed(1)}%`,
        );
      }
      const k = f.keepAlive;
      if (k) {
        const span = (ms: number): string => (ms < 1000 ? `${ms}ms` : ms < 120_000 ? `${Math.round(ms / 100) / 10}s` : `${Math.round(ms / 6000) / 10}m`);
        const from = k.source === "histogram" ? ` (from ${k.samples} idle times, cv ${k.cv})` : k.fallback ? ` (fallback: ${k.fallback})` : "";
        const windows = k.prewarmMs > 0 ? `unloaded after a request, back after ${span(k.prewarmMs)} idle, kept until ${span(k.keepAliveMs)}` : `kept ${span(k.keepAliveMs)} after a request`;
        ui.log(`keep-alive ${k.policy}: ${windows}${from}${k.prewarms ? `; ${k.prewarms} pre-warmed` : ""}`);
      }
      const m = f.memory;
      if (m) {
        const resident = m.residentMb === undefined ? "not measured by this driver" : `${m.residentMb} MiB resident`;
        ui.log(`memory on this node: ${m.countedMb} of ${m.budgetMb} MiB counted (${m.accounting}${m.accounting === "measured" ? ` + ${m.headroomMb} MiB headroom` : ""}), ${resident}, ${m.declaredMb} MiB declared`);
      }
      const p = f.pool;
      if (!p) return;
      const down = (f.nodes ?? []).filter((n) => n.error);
      for (const n of down) ui.warn(`node ${n.node} did not answer: ${n.error}`);
      ui.log(`pool${p.nodes ? ` on ${p.nodes} node${p.nodes === 1 ? "" : "s"}` : ""}: ${p.instances.length} instances, ${p.inFlight} in flight, ${p.queued} queued; starts: ${p.starts.warm} warm, ${p.starts.cell} cell, ${p.starts.cold} cold`);
      if (p.instances.length) {
        const several = p.instances.some((i) => i.node !== undefined);
        const rows = [[...(several ? ["NODE"] : []), "INSTANCE", "STATE", "IN-FLIGHT", "SERVED", "ORIGIN", "AGE", "IDLE", "MEMORY (RESIDENT/COUNTED/LIMIT MiB)"]];
        for (const i of p.instances) {
          const mem = `${i.residentMb === undefined ? "-" : Math.round(i.residentMb)}/${i.countedMb ?? "-"}/${i.memoryMb}`;
          rows.push([...(several ? [i.node ?? "-"] : []), i.id, i.state, String(i.inFlight), String(i.served), i.origin, ago(i.ageMs), ago(i.idleMs), mem]);
        }
        ui.log(table(rows));
      }
    });
  },
});
