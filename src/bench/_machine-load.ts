/**
 * How busy the machine is with work that is not the benchmark's, from /proc (Linux): on a
 * shared 2-core machine another process's burst moves a throughput by 30% and more, so a
 * benchmark waits for a quiet machine before each run and says how much else ran during it.
 */
import { readdirSync, readFileSync } from "node:fs";

/** Jiffies (1/100 s) the whole machine spent busy, and in all, so far. */
export function machineJiffies(): { busy: number; total: number } {
  const fields = (readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "").trim().split(/\s+/).slice(1, 9).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0); // idle + iowait
  return { busy: total - idle, total };
}

/** Jiffies used so far by the processes under `roots` (each root included), and by the children they have reaped. */
export function treeJiffies(roots: readonly number[]): number {
  const procs = new Map<number, { ppid: number; jiffies: number }>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // utime, stime, cutime, cstime
      procs.set(Number(entry), { ppid: Number(f[1]), jiffies: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) });
    } catch {
      // the process ended while /proc was read
    }
  }
  const under = (pid: number): boolean => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
      if (roots.includes(p)) return true;
      p = procs.get(p)?.ppid ?? 0;
    }
    return false;
  };
  let sum = 0;
  for (const [pid, p] of procs) if (under(pid)) sum += p.jiffies;
  return sum;
}

/**
 * The share of the machine's CPU (0-1, all cores) that processes outside `roots` used while
 * `run` ran. Bounded by the counters' 10 ms resolution: near 0 reads as 0-2%.
 */
export async function withOthersLoad<T>(roots: readonly number[], run: () => Promise<T>): Promise<{ result: T; others: number }> {
  const m0 = machineJiffies();
  const o0 = treeJiffies(roots);
  const result = await run();
  const m1 = machineJiffies();
  const o1 = treeJiffies(roots);
  const others = (m1.busy - m0.busy - (o1 - o0)) / Math.max(1, m1.total - m0.total);
  return { result, others: Math.max(0, others) };
}

/** Waits until the machine was at least `minIdle` idle over `windowMs`, or `maxWaitMs` passed; resolves with the idle share last seen. */
export async function waitForQuiet(minIdle = 0.8, windowMs = 500, maxWaitMs = 30_000): Promise<number> {
  const until = performance.now() + maxWaitMs;
  for (;;) {
    const a = machineJiffies();
    await Bun.sleep(windowMs); // a window of the machine's own counters, not a guessed settle time
    const b = machineJiffies();
    const idle = 1 - (b.busy - a.busy) / Math.max(1, b.total - a.total);
    if (idle >= minIdle || performance.now() >= until) return idle;
  }
}
