/**
 * Triggers end to end on a real `forge up` (process driver, in-process queue): cron
 * schedules through the CLI, bad input, restart, async invocations with retries and dead
 * letters.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, sharedDir, sharedFile, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

/** A function that appends what it was sent to $OUT and answers per $MODE. */
const RECORDER = `
import { appendFileSync, existsSync, readFileSync } from "node:fs";
export default {
  async fetch(req: Request): Promise<Response> {
    const out = process.env.OUT ?? "/dev/null";
    const id = req.headers.get("x-forge-async-id") ?? "";
    const line = JSON.stringify({ tick: req.headers.get("x-forge-schedule-tick"), id, attempt: req.headers.get("x-forge-attempt"), body: await req.text() });
    appendFileSync(out, line + "\\n");
    const mode = process.env.MODE ?? "ok";
    if (mode === "fail") return new Response("always broken", { status: 500 });
    if (mode === "reject") return new Response("bad payload", { status: 422 });
    if (mode === "flaky") {
      const seen = readFileSync(out, "utf8").split("\\n").filter((l) => l.includes(id)).length;
      if (seen <= 2) return new Response("not yet", { status: 503 });
    }
    return Response.json({ ok: true, id }, { headers: { "x-answer": "42" } });
  },
};
`;

function fnDir(root: string, name: string): string {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "index.ts"), RECORDER);
  return dir;
}

function lines(file: string): { tick: string | null; id: string; attempt: string | null; body: string }[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

async function deploy(forge: ForgeProcess, dir: string, name: string, env: Record<string, string>): Promise<void> {
  // forge.json rather than repeated --env flags: citty keeps only the last of a repeated flag.
  writeFileSync(join(dir, "forge.json"), JSON.stringify({ env }));
  const d = await cli(forge, ["deploy", dir, "--name", name]);
  if (d.code !== 0) throw new Error(`deploy ${name} failed:\n${d.stdout}\n${d.stderr}`);
}

interface InvocationView {
  id: string;
  function: string;
  status: string;
  attempts: number;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  result: { status: number; headers: Record<string, string>; body: string; encoding: string; truncated: boolean } | null;
  error: string | null;
}

async function invocation(forge: ForgeProcess, id: string): Promise<InvocationView> {
  const r = await forge.api(`/v1/invocations/${id}`);
  expect(r.status).toBe(200);
  return (await r.json()) as InvocationView;
}

describe("cron schedules", () => {
  let root: string & Disposable;
  let forge: ForgeProcess;
  beforeAll(async () => {
    root = sharedDir("forge-triggers-");
    forge = await startForge({ env: { FORGE_ASYNC_BACKOFF: "20ms" } });
  });
  afterAll(async () => {
    await forge?.[Symbol.asyncDispose]();
    root?.[Symbol.dispose]();
  });

  test("a per-second schedule made with the CLI fires into the function every second, with its payload", async () => {
    const out = sharedFile(root, "ticks.jsonl");
    await deploy(forge, fnDir(root, "ticker"), "ticker", { OUT: out });
    const made = await cli(forge, ["schedule", "ticker", "--cron", "* * * * * *", "--data", '{"job":"sync"}', "--json"]);
    expect(made.code).toBe(0);
    const s = JSON.parse(made.stdout) as { id: string; cron: string; overlap: string; nextRunAt: number; armed: boolean };
    expect(s).toMatchObject({ cron: "* * * * * *", overlap: "skip", armed: true });
    expect(s.id).toMatch(/^sch-/);

    await until(() => lines(out).length >= 2, 15_000, "two scheduled runs");
    const runs = lines(out);
    expect(JSON.parse(runs[0]?.body ?? "")).toEqual({ job: "sync" });
    // Ticks are whole seconds one after another: two runs fall within 3 s of schedule time.
    const t0 = Date.parse(runs[0]?.tick ?? "");
    const t1 = Date.parse(runs[1]?.tick ?? "");
    expect(t0 % 1000).toBe(0);
    expect(t1 - t0).toBeGreaterThanOrEqual(1000);
    expect(t1 - t0).toBeLessThanOrEqual(3000);

    const listed = await until(async () => {
      const l = JSON.parse((await cli(forge, ["schedules", "ticker", "--json"])).stdout) as { id: string; runs: number; lastStatus: number; lastRunAt: number; nextRunAt: number }[];
      return l[0] && l[0].runs >= 2 ? l : undefined;
    }, 10_000, "runs counted");
    expect(listed[0]).toMatchObject({ id: s.id, lastStatus: 200 });
    expect(listed[0]?.nextRunAt).toBeGreaterThan(listed[0]?.lastRunAt ?? Infinity);

    const text = await cli(forge, ["schedules"]);
    expect(text.code).toBe(0);
    expect(text.stdout + text.stderr).toContain(s.id);

    const del = await cli(forge, ["unschedule", s.id]);
    expect(del.code).toBe(0);
    expect(JSON.parse((await cli(forge, ["schedules", "--json"])).stdout)).toEqual([]);
    const again = await cli(forge, ["unschedule", s.id]);
    expect(again.code).not.toBe(0);
    expect(again.stdout + again.stderr).toContain("hint");
  }, 60_000);

  test("invalid cron, timezone, overlap or body is a 400 with a hint and nothing is saved", async () => {
    await deploy(forge, fnDir(root, "target"), "target", {});
    const bad: [unknown, string][] = [
      [{ cron: "not a cron" }, "invalid_cron"],
      [{ cron: "99 * * * *" }, "invalid_cron"],
      [{ cron: "0 0 30 2 *" }, "invalid_cron"],
      [{ cron: "* * * * *", timezone: "Mars/Olympus_Mons" }, "bad_request"],
      [{ cron: "* * * * *", overlap: "sometimes" }, "bad_request"],
      [{}, "invalid_cron"],
    ];
    for (const [body, code] of bad) {
      const r = await forge.api("/v1/functions/target/schedules", { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } });
      expect(r.status).toBe(400);
      const e = (await r.json()) as { error: { code: string; hint?: string } };
      expect(e.error.code).toBe(code);
      expect(e.error.hint).toBeTruthy();
    }
    const malformed = await forge.api("/v1/functions/target/schedules", { method: "POST", body: "{cron:", headers: { "content-type": "application/json" } });
    expect(malformed.status).toBe(400);
    const unknownFn = await forge.api("/v1/functions/nope/schedules", { method: "POST", body: JSON.stringify({ cron: "* * * * *" }) });
    expect(unknownFn.status).toBe(404);
    const badTz = await cli(forge, ["schedule", "target", "--cron", "* * * * *", "--tz", "Nowhere/City"]);
    expect(badTz.code).not.toBe(0);
    expect(badTz.stdout + badTz.stderr).toContain("timezone");
    const badCron = await cli(forge, ["schedule", "target", "--cron", "every minute", "--json"]);
    expect(badCron.code).not.toBe(0);
    expect(JSON.parse(badCron.stderr)).toMatchObject({ status: 400, error: { code: "invalid_cron" } });
    expect((await (await forge.api("/v1/functions/target/schedules")).json()) as unknown).toEqual({ schedules: [] });
    expect((await forge.api("/v1/schedules/sch-missing", { method: "DELETE" })).status).toBe(404);
    expect((await forge.api("/v1/functions/target/dead-letters?limit=abc")).status).toBe(400);
  }, 60_000);

  test("deleting a function deletes its schedules", async () => {
    await deploy(forge, fnDir(root, "doomed"), "doomed", {});
    const r = await forge.api("/v1/functions/doomed/schedules", { method: "POST", body: JSON.stringify({ cron: "0 * * * *", timezone: "Europe/Oslo" }) });
    expect(r.status).toBe(201);
    const { id } = (await r.json()) as { id: string };
    expect((await cli(forge, ["delete", "doomed"])).code).toBe(0);
    expect((await forge.api(`/v1/schedules/${id}`)).status).toBe(404);
  }, 60_000);
});

describe("async invocations (in-process queue)", () => {
  let root: string & Disposable;
  let forge: ForgeProcess;
  beforeAll(async () => {
    root = sharedDir("forge-async-");
    forge = await startForge({ env: { FORGE_ASYNC_BACKOFF: "20ms", FORGE_MAX_BODY_MB: "1" } });
  });
  afterAll(async () => {
    await forge?.[Symbol.asyncDispose]();
    root?.[Symbol.dispose]();
  });

  test("failing twice then succeeding ends succeeded with attempts 3 and the result", async () => {
    const out = sharedFile(root, "flaky.jsonl");
    await deploy(forge, fnDir(root, "flaky"), "flaky", { OUT: out, MODE: "flaky" });
    const inv = await cli(forge, ["invoke", "flaky", "--async", "--data", '{"n":7}']);
    expect(inv.code).toBe(0);
    const id = inv.stdout.trim();
    expect(id).toMatch(/^inv-[0-9a-f]+$/);
    const done = await until(async () => {
      const v = await invocation(forge, id);
      return v.status === "succeeded" || v.status === "dead" ? v : undefined;
    }, 20_000, "flaky to finish");
    expect(done).toMatchObject({ id, function: "flaky", status: "succeeded", attempts: 3, error: null });
    expect(done.result?.status).toBe(200);
    expect(JSON.parse(done.result?.body ?? "")).toEqual({ ok: true, id });
    expect(done.result?.headers["x-answer"]).toBe("42");
    expect(done.finishedAt).toBeGreaterThanOrEqual(done.createdAt);
    const calls = lines(out).filter((l) => l.id === id);
    expect(calls.map((c) => c.attempt)).toEqual(["1", "2", "3"]);
    expect(calls.every((c) => c.body === '{"n":7}')).toBe(true);
  }, 60_000);

  test("an always-failing invocation ends dead after 3 attempts and is listed in dead letters", async () => {
    await deploy(forge, fnDir(root, "broken"), "broken", { MODE: "fail" });
    const r = await forge.api("/v1/functions/broken/invoke?async=1", { method: "POST", body: '{"why":"test"}', headers: { "content-type": "application/json" } });
    expect(r.status).toBe(202);
    const { id, status } = (await r.json()) as { id: string; status: string };
    expect(status).toBe("queued");
    expect(r.headers.get("location")).toBe(`/v1/invocations/${id}`);
    const dead = await until(async () => {
      const v = await invocation(forge, id);
      return v.status === "dead" ? v : undefined;
    }, 20_000, "broken to be dead");
    expect(dead.attempts).toBe(3);
    expect(dead.error).toContain("500");
    expect(dead.result).toMatchObject({ status: 500, body: "always broken" });
    const dl = (await (await forge.api("/v1/functions/broken/dead-letters")).json()) as { deadLetters: { id: string; attempts: number; payload: string; error: string }[] };
    expect(dl.deadLetters.map((d) => [d.id, d.attempts, d.payload])).toEqual([[id, 3, '{"why":"test"}']]);
  }, 60_000);

  test("a 4xx answer is not retried: dead after one attempt", async () => {
    await deploy(forge, fnDir(root, "picky"), "picky", { MODE: "reject" });
    const inv = await cli(forge, ["invoke", "picky", "--async", "--json"]);
    expect(inv.code).toBe(0);
    const { id } = JSON.parse(inv.stdout) as { id: string };
    const dead = await until(async () => {
      const v = await invocation(forge, id);
      return v.status === "dead" ? v : undefined;
    }, 20_000, "picky to be dead");
    expect(dead.attempts).toBe(1);
    expect(dead.result?.status).toBe(422);
  }, 60_000);

  test("bad input: unknown function 404, unknown invocation 404, body over the limit 413", async () => {
    const nf = await forge.api("/v1/functions/ghost/invoke?async=1", { method: "POST", body: "{}" });
    expect(nf.status).toBe(404);
    const unknown = await forge.api("/v1/invocations/inv-nope");
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { hint: string } }).error.hint).toBeTruthy();
    expect((await forge.api("/v1/functions/ghost/dead-letters")).status).toBe(404);
    const big = await forge.api("/v1/functions/flaky/invoke?async=1", { method: "POST", body: "x".repeat(1024 * 1024 + 1) });
    expect(big.status).toBe(413);
    expect(((await big.json()) as { error: { code: string; hint: string } }).error).toMatchObject({ code: "body_too_large", hint: expect.any(String) });
  }, 60_000);
});

describe("restart", () => {
  test("schedules survive a restart and fire again", async () => {
    using data = tempDir("forge-sched-restart-");
    using root = sharedDir("forge-sched-fn-");
    const out = sharedFile(root, "ticks.jsonl");
    const first = await startForge({ dataDir: data });
    let id: string;
    try {
      await deploy(first, fnDir(root, "cronfn"), "cronfn", { OUT: out });
      const r = await first.api("/v1/functions/cronfn/schedules", { method: "POST", body: JSON.stringify({ cron: "* * * * * *", data: { n: 1 } }) });
      expect(r.status).toBe(201);
      id = ((await r.json()) as { id: string }).id;
    } finally {
      await first.stop();
    }
    const before = lines(out).length;
    await using second = await startForge({ dataDir: data });
    const listed = (await (await second.api("/v1/schedules")).json()) as { schedules: { id: string; armed: boolean; data: unknown }[] };
    expect(listed.schedules).toEqual([expect.objectContaining({ id, armed: true, data: { n: 1 } })]);
    await until(() => lines(out).length >= before + 2, 15_000, "ticks after the restart");
  }, 60_000);
});
