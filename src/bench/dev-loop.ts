/**
 * The `forge dev` loop: from writing a file of the watched folder until the new version
 * answers, over a number of edits, on a forge this script starts (a fresh data dir). The
 * time holds dev's debounce (DEBOUNCE_MS in src/cli/dev.ts), the pack and bundle, the
 * upload, the server's build and verified start, and the first request.
 *
 *   bun src/bench/dev-loop.ts [--edits 10] [--driver process|docker] [--stem-cells 2] [--json out.json]
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { median, startForgeChild } from "./_forge-process.ts";

const ROOT = resolve(import.meta.dir, "../..");
const NAME = "devloop";
/** Longest wait for one edit before the run is called failed (a wedged run, not a slow one). */
const EDIT_TIMEOUT_MS = 60_000;

const handler = (answer: string): string => `export default {
  fetch(): Response {
    return new Response(${JSON.stringify(answer)});
  },
};
`;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      edits: { type: "string", default: "10" },
      driver: { type: "string", default: "process" },
      "stem-cells": { type: "string", default: "2" },
      json: { type: "string" },
    },
  });
  const edits = Number(values.edits);
  if (!Number.isInteger(edits) || edits < 1) {
    process.stderr.write("usage: bun src/bench/dev-loop.ts [--edits 10] [--driver process|docker] [--stem-cells 2] [--json out.json]\n");
    return 1;
  }
  const dataDir = mkdtempSync(join(tmpdir(), "forge-devloop-data-"));
  const fnDir = mkdtempSync(join(tmpdir(), "forge-devloop-fn-"));
  const index = join(fnDir, "index.ts");
  writeFileSync(index, handler("edit 0"));
  const forge = await startForgeChild({ FORGE_DATA_DIR: dataDir, FORGE_DRIVER: values.driver ?? "process", FORGE_STEM_CELLS: values["stem-cells"] ?? "2" });
  const dev = Bun.spawn([process.execPath, join(ROOT, "src/cli/main.ts"), "dev", fnDir, "--name", NAME, "--rm"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", XDG_CONFIG_HOME: join(dataDir, "xdg"), NO_COLOR: "1", FORGE_URL: forge.url, FORGE_API_KEY: forge.key },
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  const pump = async (s: ReadableStream<Uint8Array>): Promise<void> => {
    const dec = new TextDecoder();
    for await (const chunk of s as unknown as AsyncIterable<Uint8Array>) out += dec.decode(chunk, { stream: true });
  };
  const pumped = Promise.all([pump(dev.stdout), pump(dev.stderr)]);
  const answer = async (): Promise<string> => {
    try {
      const res = await fetch(forge.url, { headers: { host: `${NAME}.localhost:${forge.port}` } });
      return await res.text();
    } catch {
      return "";
    }
  };
  /** Polls (every ms or so: the poll is part of what is measured) until `check` holds. */
  const until = async (check: () => boolean | Promise<boolean>, what: string): Promise<void> => {
    const deadline = performance.now() + EDIT_TIMEOUT_MS;
    while (!(await check())) {
      if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}; forge dev printed:\n${out}`);
      await Bun.sleep(1);
    }
  };

  const editMs: number[] = [];
  try {
    await until(async () => (await answer()) === "edit 0", "the first version");
    for (let i = 1; i <= edits; i++) {
      const t0 = performance.now();
      writeFileSync(index, handler(`edit ${i}`));
      await until(async () => (await answer()) === `edit ${i}`, `edit ${i}`);
      editMs.push(performance.now() - t0);
    }
  } finally {
    dev.kill("SIGINT");
    await dev.exited;
    await pumped;
    forge.proc.kill("SIGTERM");
    await forge.proc.exited;
    rmSync(dataDir, { recursive: true, force: true });
    rmSync(fnDir, { recursive: true, force: true });
  }

  // dev's own figure for each version: from the debounce's end to the deploy's result
  const devMs = [...out.matchAll(/ v\d+ is live(?: at \S+)? \((\d+) ms\)/g)].slice(1).map((m) => Number(m[1]));
  const sorted = [...editMs].sort((a, b) => a - b);
  const p50 = median(editMs);
  const max = sorted[sorted.length - 1] ?? NaN;
  console.log(`forge dev loop, ${values.driver} driver, ${edits} edits (write to new answer)`);
  console.log(`each ms: ${editMs.map((ms) => ms.toFixed(0)).join(" ")}`);
  console.log(`p50 ${p50.toFixed(0)} ms   max ${max.toFixed(0)} ms   (of which dev's deploy, p50: ${median(devMs).toFixed(0)} ms; debounce 120 ms)`);
  if (values.json) await Bun.write(values.json, JSON.stringify({ driver: values.driver, edits, editMs, devMs, p50Ms: p50, maxMs: max }, null, 2));
  return 0;
}

process.exit(await main());
