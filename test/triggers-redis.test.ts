/**
 * Triggers on a real Redis: a forge killed with -9 while async invocations are queued and
 * running loses none of them; two forge processes sharing Redis (and one SQLite file) fire
 * each cron tick once and run each async invocation once.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { cli, sharedDir, sharedFile, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireServices } from "./_services.ts";

const services = requireServices("redisUrl");
const prefixes: string[] = [];

afterAll(async () => {
  if (!services || prefixes.length === 0) return;
  const redis = new Redis(services.redisUrl);
  try {
    for (const prefix of prefixes) {
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length > 0) await redis.del(...keys);
    }
  } finally {
    redis.disconnect();
  }
});

/** Appends {phase, id, attempt, tick} to $OUT; waits $SLOW_MS before answering 200. */
const SOURCE = `
import { appendFileSync } from "node:fs";
export default {
  async fetch(req: Request): Promise<Response> {
    const out = process.env.OUT ?? "/dev/null";
    const rec = { id: req.headers.get("x-forge-async-id"), attempt: req.headers.get("x-forge-attempt"), tick: req.headers.get("x-forge-schedule-tick") };
    appendFileSync(out, JSON.stringify({ phase: "start", ...rec }) + "\\n");
    await Bun.sleep(Number(process.env.SLOW_MS ?? 0));
    appendFileSync(out, JSON.stringify({ phase: "done", ...rec }) + "\\n");
    return Response.json({ ok: true });
  },
};
`;

interface Line {
  phase: "start" | "done";
  id: string | null;
  attempt: string | null;
  tick: string | null;
}

function read(file: string): Line[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Line);
}

async function deployFn(forge: ForgeProcess, root: string, name: string, env: Record<string, string>): Promise<void> {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "index.ts"), SOURCE);
  writeFileSync(join(dir, "forge.json"), JSON.stringify({ env, concurrency: 8 }));
  const d = await cli(forge, ["deploy", dir, "--name", name]);
  if (d.code !== 0) throw new Error(`deploy failed:\n${d.stdout}\n${d.stderr}`);
}

async function submit(forge: ForgeProcess, name: string, body: unknown): Promise<string> {
  const r = await forge.api(`/v1/functions/${name}/invoke?async=1`, { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } });
  expect(r.status).toBe(202);
  return ((await r.json()) as { id: string }).id;
}

async function status(forge: ForgeProcess, id: string): Promise<{ status: string; attempts: number }> {
  return (await (await forge.api(`/v1/invocations/${id}`)).json()) as { status: string; attempts: number };
}

function redisEnv(extra: Record<string, string> = {}): Record<string, string> {
  const prefix = `forge-test-${randomBytes(4).toString("hex")}`;
  prefixes.push(prefix);
  return { FORGE_REDIS_URL: services?.redisUrl ?? "", FORGE_REDIS_PREFIX: prefix, FORGE_ASYNC_BACKOFF: "20ms", ...extra };
}

describe.skipIf(!services)("triggers on Redis", () => {
  test("kill -9 with queued and running async invocations, restart: all of them complete", async () => {
    using data = tempDir("forge-redis-kill-");
    using root = sharedDir("forge-redis-kill-fn-");
    const out = sharedFile(root, "calls.jsonl");
    const env = redisEnv({ FORGE_ASYNC_CONCURRENCY: "1", FORGE_QUEUE_VISIBILITY: "1s" });
    const first = await startForge({ dataDir: data, env });
    let ids: string[] = [];
    let runningAtKill: string | undefined;
    try {
      await deployFn(first, root, "slow", { OUT: out, SLOW_MS: "700" });
      for (let i = 0; i < 5; i++) ids.push(await submit(first, "slow", { i }));
      runningAtKill = await until(async () => {
        for (const id of ids) if ((await status(first, id)).status === "running") return id;
        return undefined;
      }, 20_000, "an invocation to be running");
    } finally {
      await first.stop("SIGKILL");
    }
    const queuedAtKill = ids.filter((id) => id !== runningAtKill);
    expect(queuedAtKill.length).toBeGreaterThanOrEqual(3);

    await using second = await startForge({ dataDir: data, env });
    const finals = await until(async () => {
      const all = await Promise.all(ids.map((id) => status(second, id)));
      return all.every((s) => s.status === "succeeded") ? all : undefined;
    }, 30_000, "every invocation to succeed after the restart");
    expect(finals).toHaveLength(5);
    // The one cut short by the kill was run again by the next forge.
    const again = await status(second, runningAtKill ?? "");
    expect(again.attempts).toBeGreaterThanOrEqual(2);
    const done = new Set(read(out).filter((l) => l.phase === "done").map((l) => l.id));
    for (const id of ids) expect(done.has(id)).toBe(true);
  }, 60_000);

  test("two forge processes on one Redis: a per-second schedule runs once per tick; each async invocation runs once", async () => {
    using data = tempDir("forge-redis-two-");
    using root = sharedDir("forge-redis-two-fn-");
    const out = sharedFile(root, "calls.jsonl");
    const env = redisEnv({ FORGE_TRIGGER_SYNC: "200ms" });
    await using a = await startForge({ dataDir: data, env });
    await deployFn(a, root, "shared", { OUT: out });
    const made = await a.api("/v1/functions/shared/schedules", { method: "POST", body: JSON.stringify({ cron: "* * * * * *" }) });
    expect(made.status).toBe(201);
    const { id } = (await made.json()) as { id: string };

    await using b = await startForge({ dataDir: data, env });
    // Both nodes have the schedule armed: each would fire every tick without the lease.
    for (const node of [a, b]) {
      const { schedules } = (await (await node.api("/v1/schedules")).json()) as { schedules: { id: string; armed: boolean }[] };
      expect(schedules).toEqual([expect.objectContaining({ id, armed: true })]);
    }
    const bothUp = Date.now();
    const ticksSinceBoth = (): string[] =>
      read(out)
        .filter((l) => l.phase === "start" && l.tick !== null && Date.parse(l.tick) > bothUp + 1000)
        .map((l) => l.tick ?? "");
    await until(() => ticksSinceBoth().length >= 4, 20_000, "four ticks with both nodes up");

    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(await submit(i % 2 === 0 ? a : b, "shared", { i }));
    await until(async () => {
      const all = await Promise.all(ids.map((x) => status(a, x)));
      return all.every((s) => s.status === "succeeded");
    }, 30_000, "the async invocations to succeed");

    const ticks = ticksSinceBoth();
    expect(new Set(ticks).size).toBe(ticks.length);
    const asyncStarts = read(out).filter((l) => l.phase === "start" && l.id !== null);
    expect(asyncStarts.map((l) => l.id).sort()).toEqual([...ids].sort());
  }, 60_000);
});
