/**
 * Prometheus metrics in the text exposition format. Counters and histograms are updated
 * from invocation records (a map lookup and a few adds per request); gauges are read from
 * the pool when /metrics is scraped.
 */
import type { InvocationRecord } from "../store/index.ts";

const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

class Histogram {
  readonly counts = new Array<number>(DURATION_BUCKETS.length).fill(0);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    this.sum += seconds;
    this.count++;
    for (let i = 0; i < DURATION_BUCKETS.length; i++) {
      if (seconds <= (DURATION_BUCKETS[i] ?? Infinity)) {
        this.counts[i] = (this.counts[i] ?? 0) + 1;
        return;
      }
    }
  }
}

export interface GaugeSample {
  labels: Record<string, string>;
  value: number;
}

export interface Gauges {
  instances(): GaugeSample[];
  stemCells(): number;
  queueDepth(): GaugeSample[];
  provisionJobs?(): GaugeSample[] | Promise<GaugeSample[]>;
  /** The memory budget and what fills it, MiB (resident: undefined when the driver does not measure). */
  memory?(): { budgetMb: number; countedMb: number; declaredMb: number; residentMb: number | undefined };
  /** Memory-time counted so far, MiB-seconds, by function; the stem cells' under "". */
  memorySeconds?(): Map<string, number>;
}

const MIB = 1024 * 1024;

export interface MetricsOptions {
  version: string;
  driver: string;
  gauges: Gauges;
  /** This node's id, on every series (several nodes: each serves its own /metrics). Default none. */
  node?: string;
}

/** A function's series: counters by status and start kind, and its two histograms. */
class FunctionSeries {
  /** Keyed by status * 8 + start kind code: no string is built per request. */
  readonly counts = new Map<number, GaugeSample>();
  readonly duration = new Histogram();
  readonly queueWait = new Histogram();
}

const START_CODES: Record<string, number> = { warm: 1, cell: 2, cold: 3 };

export class Metrics {
  private readonly series = new Map<string, FunctionSeries>();
  private readonly startedAt = Date.now() / 1000;

  constructor(private readonly o: MetricsOptions) {}

  /** Counts one finished invocation. */
  observe(r: InvocationRecord): void {
    let s = this.series.get(r.function);
    if (!s) this.series.set(r.function, (s = new FunctionSeries()));
    const key = (r.status ?? 0) * 8 + (r.start === null ? 0 : (START_CODES[r.start] ?? 0));
    const c = s.counts.get(key);
    if (c) c.value++;
    else s.counts.set(key, { labels: { function: r.function, status: String(r.status ?? 0), start: r.start ?? "none" }, value: 1 });
    if (r.durationMs !== null) s.duration.observe(r.durationMs / 1000);
    if (r.queueWaitMs !== null) s.queueWait.observe(r.queueWaitMs / 1000);
  }

  /** Forgets a deleted function's series. */
  forget(fn: string): void {
    this.series.delete(fn);
  }

  async render(): Promise<string> {
    const out = new Family(this.o.node ? { node: this.o.node } : {});
    const g = this.o.gauges;
    out.family("forge_build_info", "gauge", "forge's version and runtime", [{ labels: { version: this.o.version, bun: Bun.version, driver: this.o.driver }, value: 1 }]);
    const series = [...this.series];
    out.family("forge_invocations_total", "counter", "finished invocations by function, HTTP status and start kind", series.flatMap(([, s]) => [...s.counts.values()]));
    out.histogram("forge_invocation_duration_seconds", "time from request to the end of the response body", series.map(([fn, s]) => [fn, s.duration]));
    out.histogram("forge_queue_wait_seconds", "time a request waited for a free instance slot", series.map(([fn, s]) => [fn, s.queueWait]));
    out.family("forge_instances", "gauge", "instances by function and state", g.instances());
    out.family("forge_stem_cells", "gauge", "generic warm instances ready to be specialized", [{ labels: {}, value: g.stemCells() }]);
    out.family("forge_queue_depth", "gauge", "requests waiting for a free slot", g.queueDepth());
    if (g.provisionJobs) out.family("forge_provision_jobs", "gauge", "provisioning jobs by status", await g.provisionJobs());
    if (g.memory) {
      const m = g.memory();
      out.family("forge_memory_budget_bytes", "gauge", "the memory budget instances and stem cells are admitted within", [{ labels: {}, value: m.budgetMb * MIB }]);
      out.family("forge_memory_counted_bytes", "gauge", "memory the budget counts now (measured resident memory plus headroom, or declared limits)", [{ labels: {}, value: m.countedMb * MIB }]);
      out.family("forge_memory_declared_bytes", "gauge", "sum of the memory limits of live instances and stem cells", [{ labels: {}, value: m.declaredMb * MIB }]);
      if (m.residentMb !== undefined) out.family("forge_memory_resident_bytes", "gauge", "resident memory of instances and stem cells, last measured", [{ labels: {}, value: m.residentMb * MIB }]);
    }
    if (g.memorySeconds) {
      const bySource = [...g.memorySeconds()];
      const gib = (mbSeconds: number): number => Math.round((mbSeconds / 1024) * 1e6) / 1e6;
      out.family(
        "forge_instance_memory_seconds_total",
        "counter",
        "memory-time of function instances as the budget counts them, GiB-seconds, by function",
        bySource.filter(([fn]) => fn !== "").map(([fn, v]) => ({ labels: { function: fn }, value: gib(v) })),
      );
      out.family("forge_cell_memory_seconds_total", "counter", "memory-time of stem cells not yet specialized, GiB-seconds", [{ labels: {}, value: gib(bySource.find(([fn]) => fn === "")?.[1] ?? 0) }]);
    }
    const mem = process.memoryUsage();
    const cpu = process.cpuUsage();
    out.family("process_resident_memory_bytes", "gauge", "resident memory of the forge process", [{ labels: {}, value: mem.rss }]);
    out.family("process_cpu_seconds_total", "counter", "CPU time of the forge process", [{ labels: {}, value: (cpu.user + cpu.system) / 1e6 }]);
    out.family("process_start_time_seconds", "gauge", "start time of the forge process since the epoch", [{ labels: {}, value: this.startedAt }]);
    return out.text();
  }
}

// --- internal ---

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function labelText(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function num(v: number): string {
  if (v === Infinity) return "+Inf";
  return Number.isInteger(v) ? String(v) : v.toPrecision(10).replace(/\.?0+$/, "");
}

/** The text of one scrape; `base` labels (the node) go on every sample. */
class Family {
  private readonly lines: string[] = [];
  constructor(private readonly base: Record<string, string>) {}

  family(name: string, type: string, help: string, samples: GaugeSample[]): void {
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const s of samples) this.lines.push(`${name}${this.labels(s.labels)} ${num(s.value)}`);
  }

  histogram(name: string, help: string, histograms: [string, Histogram][]): void {
    const out = this.lines;
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
    for (const [fn, h] of histograms) {
      let cumulative = 0;
      DURATION_BUCKETS.forEach((le, i) => {
        cumulative += h.counts[i] ?? 0;
        out.push(`${name}_bucket${this.labels({ function: fn, le: num(le) })} ${cumulative}`);
      });
      out.push(`${name}_bucket${this.labels({ function: fn, le: "+Inf" })} ${h.count}`);
      out.push(`${name}_sum${this.labels({ function: fn })} ${num(h.sum)}`);
      out.push(`${name}_count${this.labels({ function: fn })} ${h.count}`);
    }
  }

  text(): string {
    return this.lines.join("\n") + "\n";
  }

  private labels(labels: Record<string, string>): string {
    return labelText({ ...this.base, ...labels });
  }
}
