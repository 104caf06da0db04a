/**
 * The gateway's test suite, run again and again while other processes keep every core busy:
 * a test that fails only when the machine is loaded is a defect to find, not noise.
 *
 *   bun test/soak/gateway-under-load.ts [--runs 20]
 *
 * Exits 1 at the first failing run (its failures printed), 0 when all runs passed.
 */
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const ROOT = join(import.meta.dir, "..", "..");
const { values } = parseArgs({ options: { runs: { type: "string", default: "20" }, file: { type: "string", default: "test/gateway.test.ts" } } });
const runs = Number(values.runs);

// One busy loop per core, each in its own process, for as long as the runs take.
const burners = Array.from({ length: availableParallelism() }, () =>
  Bun.spawn([process.execPath, "-e", "for (;;) { Math.sqrt(Math.random()); }"], { stdout: "ignore", stderr: "ignore" }),
);
let failed = false;
try {
  for (let i = 1; i <= runs && !failed; i++) {
    const started = performance.now();
    const proc = Bun.spawn([process.execPath, "test", "--timeout", "60000", values.file], { cwd: ROOT, stdout: "pipe", stderr: "pipe", env: process.env });
    const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
    const code = await proc.exited;
    const text = out + err;
    const summary = [/(\d+) pass/.exec(text)?.[1] ?? "?", /(\d+) fail/.exec(text)?.[1] ?? "?"];
    console.log(`run ${i}/${runs}: ${summary[0]} pass, ${summary[1]} fail (${((performance.now() - started) / 1000).toFixed(1)} s, ${burners.length} cores kept busy)`);
    if (code !== 0) {
      failed = true;
      // The failures, and around each error what the test printed (a server's output, say).
      const lines = text.split("\n");
      const shown = new Set<number>();
      lines.forEach((l, i) => {
        if (/^error:|\(fail\)/.test(l)) for (let k = Math.max(0, i - 2); k < Math.min(lines.length, i + 25); k++) shown.add(k);
      });
      console.log([...shown].sort((a, b) => a - b).slice(0, 120).map((i) => lines[i]).join("\n"));
    }
  }
} finally {
  for (const b of burners) b.kill();
}
process.exit(failed ? 1 : 0);
