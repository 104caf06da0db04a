/**
 * The one function every trace function is deployed as, told apart by its env:
 * TRACE_MEMORY_MB (allocated and touched at load, so it is resident, as the app's memory) and
 * TRACE_DURATIONS (its [percentile, ms] table; each request waits a draw from it on a timer,
 * not on the CPU, so that 200 functions do not compete for two cores). It answers with
 * `x-run-ms`: its own run time, ms, so the replay can take it out of the end-to-end latency.
 */
export const TRACE_FUNCTION_SOURCE = `const mb = Number(process.env.TRACE_MEMORY_MB ?? "0");
const table = JSON.parse(process.env.TRACE_DURATIONS ?? "[[0,10],[100,10]]");
// Buffer.alloc with a fill writes every byte: the pages are resident, not just reserved.
const ballast = Buffer.alloc(Math.max(0, Math.round(mb * 1048576)), 1);

function draw(u) {
  const q = Math.min(100, Math.max(0, u * 100));
  let [prevP, prevV] = table[0];
  if (q <= prevP) return prevV;
  for (let i = 1; i < table.length; i++) {
    const p = table[i][0];
    const v = Math.max(prevV, table[i][1]);
    if (q <= p) return p === prevP ? v : prevV + ((q - prevP) / (p - prevP)) * (v - prevV);
    prevP = p;
    prevV = v;
  }
  return prevV;
}

export default {
  async fetch() {
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, draw(Math.random())));
    const run = performance.now() - t0;
    return new Response("ok " + ballast.length + "\\n", { headers: { "content-type": "text/plain", "x-run-ms": run.toFixed(3) } });
  },
};
`;

/** The memory a function declares for `drawnMb` resident: half again, in 32 MB steps, at least 128 (bun's own ~40 MB fits). */
export function declaredMemoryMb(drawnMb: number): number {
  return Math.max(128, Math.ceil((drawnMb * 1.5) / 32) * 32);
}
