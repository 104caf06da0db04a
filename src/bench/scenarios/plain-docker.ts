/**
 * The baseline users know: `docker run` of the runtime image serving the same function
 * on a published port, from the moment the command starts to the first full response.
 * No forge involved: what a naive "one container per cold request" platform pays.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { Histogram } from "../histogram.ts";
import { latencyFields, type ScenarioResult } from "../report.ts";
import { FUNCTION_SOURCE, freePort, skipped, type SuiteContext } from "./_shared.ts";

export const NAME = "docker-run";
export const TITLE = "plain `docker run` of the runtime image to its first response (the baseline)";

/** Why the baseline cannot run here, or undefined when it can. */
export async function dockerUnavailable(image: string): Promise<string | undefined> {
  const version = await exec(["docker", "version", "--format", "{{.Server.Version}}"]);
  if (version.code !== 0) return `no Docker engine answers (${version.err.trim().split("\n")[0] ?? "docker version failed"})`;
  const inspect = await exec(["docker", "image", "inspect", "--format", "{{.Id}}", image]);
  if (inspect.code !== 0) return `the runtime image ${image} is not built (build it with \`forge images build bun\`)`;
  return undefined;
}

export async function plainDockerRun(ctx: SuiteContext): Promise<ScenarioResult> {
  const image = ctx.settings.runtimeImage;
  const why = await dockerUnavailable(image);
  if (why) return skipped(NAME, TITLE, "first-request", why);
  const dir = join(ctx.tmp, "docker-fn");
  await mkdir(dir, { recursive: true });
  await Bun.write(join(dir, "index.js"), FUNCTION_SOURCE);
  const h = new Histogram();
  for (let i = 0; i < ctx.settings.samples; i++) {
    const name = `${ctx.prefix}run-${i}`;
    const port = freePort();
    const t0 = Bun.nanoseconds();
    const run = exec([
      "docker", "run", "-d", "--rm", "--name", name, "--label", "dev.forge.bench=true",
      "-p", `127.0.0.1:${port}:8080`, "-e", "PORT=8080", "-e", "FORGE_BUNDLE=/fn/index.js",
      "-v", `${dir}:/fn:ro`, image,
    ]);
    try {
      await firstResponse(`http://127.0.0.1:${port}/`, run, 30_000);
      h.record((Bun.nanoseconds() - t0) / 1000);
    } finally {
      await run;
      await exec(["docker", "rm", "-f", name]);
    }
  }
  return { name: NAME, title: TITLE, kind: "first-request", ...latencyFields(h), errors: 0, extra: { image } };
}

// --- internal ---

/**
 * Waits for `docker run -d` to return (the container has started), then polls until the
 * URL answers 200. Polling before that would measure Docker's networking instead: a
 * connection docker-proxy forwards before the container's interface is up leaves a failed
 * neighbour entry, and the container is then unreachable for ~1 s (measured here: first
 * response at ~1.1 s when polled from the start, ~0.45 s when polled once run returns).
 */
async function firstResponse(url: string, run: Promise<{ code: number; err: string }>, timeoutMs: number): Promise<void> {
  const started = await run;
  if (started.code !== 0) throw new Error(`docker run failed: ${started.err.trim() || `exit ${started.code}`}`);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      // A fresh connection each try: docker-proxy accepts before the server inside listens.
      const res = await fetch(url, { keepalive: false, signal: AbortSignal.timeout(1_000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (performance.now() > deadline) throw new Error(`the container did not answer within ${timeoutMs} ms`);
    await Bun.sleep(1); // polling a condition: the container's first response
  }
}

async function exec(cmd: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const proc = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    return { code, out, err };
  } catch (err) {
    return { code: 127, out: "", err: err instanceof Error ? err.message : String(err) };
  }
}
