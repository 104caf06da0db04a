/**
 * Several forge nodes on one Postgres and one Redis (issue 15): separate processes with their
 * own ports, data folders and pools on this machine, behind a real nginx where a test needs a
 * load balancer. Each run gets a database of its own and a Redis prefix of its own.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, sharedDir, sharedFile, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { testCluster, type TestCluster } from "./_cluster.ts";
import { startNginx } from "./_nginx.ts";
import { requireServices } from "./_services.ts";

const services = requireServices("redisUrl", "pgUrl");

/** Answers which version it is and logs a line per request. */
const SOURCE = `
export default {
  async fetch(req: Request): Promise<Response> {
    const url = new URL(req.url);
    if (url.pathname === "/log") console.log("hello from " + (url.searchParams.get("who") ?? "?"));
    return Response.json({ v: process.env.V ?? "1" });
  },
};
`;

/** Appends a line per call to $OUT: async invocations and cron ticks, to count them. */
const COUNTER = `
import { appendFileSync } from "node:fs";
export default {
  async fetch(req: Request): Promise<Response> {
    appendFileSync(process.env.OUT ?? "/dev/null", JSON.stringify({ id: req.headers.get("x-forge-async-id"), tick: req.headers.get("x-forge-schedule-tick") }) + "\\n");
    return Response.json({ ok: true });
  },
};
`;

describe.skipIf(!services)("several nodes on Postgres and Redis", () => {
  const fns = tempDir("forge-cluster-fns-");
  let cluster: TestCluster;
  let a: ForgeProcess;
  let b: ForgeProcess;

  /** A node of this run's cluster (reconcile an hour away: what a test sees travelled by notification). */
  const node = (extra: Record<string, string> = {}, dataDir?: string): Promise<ForgeProcess> => startForge({ ...(dataDir ? { dataDir } : {}), env: cluster.env(extra) });

  beforeAll(async () => {
    cluster = await testCluster(services as { pgUrl: string; redisUrl: string }, "cluster");
    a = await node();
    b = await node();
  }, 60_000);

  afterAll(async () => {
    try {
      await Promise.all([a?.[Symbol.asyncDispose](), b?.[Symbol.asyncDispose]()]);
      await cluster?.[Symbol.asyncDispose]();
    } finally {
      fns[Symbol.dispose]();
    }
  });

  async function deploy(via: ForgeProcess, name: string, source = SOURCE, env: Record<string, string> = {}): Promise<void> {
    const dir = join(fns, `${name}-${randomBytes(3).toString("hex")}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "index.ts"), source);
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ name, env }));
    const r = await cli(via, ["deploy", dir]);
    if (r.code !== 0) throw new Error(`deploy of ${name} through ${via.url} failed:\n${r.stdout}\n${r.stderr}`);
  }

  const version = async (on: ForgeProcess, name: string): Promise<string | undefined> => {
    const res = await on.fn(name, "/").catch(() => undefined);
    return res?.status === 200 ? ((await res.json()) as { v: string }).v : undefined;
  };

  const bunCells = async (on: ForgeProcess): Promise<number> => ((await (await fetch(`${on.url}/readyz`)).json()) as { stemCellsByRuntime: { bun?: number } }).stemCellsByRuntime.bun ?? 0;

  test("a deploy through node A is served by node B at once, its first request from B's stem cell", async () => {
    await until(async () => (await bunCells(b)) >= 1, 30_000, "a stem cell on B");
    await deploy(a, "greet");
    const answered = performance.now();
    await until(() => version(b, "greet"), 10_000, "B serving greet");
    const ms = performance.now() - answered;
    console.log(`deploy answered through A -> first 200 on B: ${ms.toFixed(0)} ms`);
    // With the periodic reconcile an hour away, only the notification can have told B.
    const local = (await (await b.api("/v1/functions/greet?local=1")).json()) as { pool: { instances: { origin: string }[] } };
    expect(local.pool.instances.map((i) => i.origin)).toEqual(["cell"]);
  }, 60_000);

  test("forge logs, info and versions give the same answer through either node", async () => {
    await deploy(a, "same", SOURCE, { V: "1" });
    await deploy(b, "same", SOURCE, { V: "2" });
    await until(async () => (await version(a, "same")) === "2" && (await version(b, "same")) === "2", 10_000, "v2 on both nodes");
    for (let i = 0; i < 3; i++) {
      expect((await a.fn("same", `/log?who=a${i}`)).status).toBe(200);
      expect((await b.fn("same", `/log?who=b${i}`)).status).toBe(200);
    }
    const logsVia = async (n: ForgeProcess): Promise<string> => {
      const r = await cli(n, ["logs", "same", "--json"]);
      expect(r.code).toBe(0);
      return r.stdout;
    };
    // Each node's lines reach its log files a moment after the request: wait for all six.
    const logs = await until(async () => {
      const [viaA, viaB] = await Promise.all([logsVia(a), logsVia(b)]);
      return viaA.split("\n").filter((l) => l.includes("hello from")).length === 6 && viaA === viaB ? viaA : undefined;
    }, 10_000, "all six lines through both nodes").catch(async (err: unknown) => {
      throw new Error(`${String(err)}\nvia A:\n${await logsVia(a)}\nvia B:\n${await logsVia(b)}`);
    });
    const lines = logs.split("\n").filter(Boolean).map((l) => JSON.parse(l) as { ts: number; node: string; text: string });
    expect(new Set(lines.map((l) => l.node)).size).toBe(2);
    expect(lines.map((l) => l.ts)).toEqual([...lines.map((l) => l.ts)].sort((x, y) => x - y));

    const versionsVia = async (n: ForgeProcess): Promise<unknown> => JSON.parse((await cli(n, ["versions", "same", "--json"])).stdout);
    expect(await versionsVia(a)).toEqual(await versionsVia(b));
    expect(((await versionsVia(a)) as { version: number; active: boolean }[]).map((v) => [v.version, v.active])).toEqual([
      [2, true],
      [1, false],
    ]);

    interface Info {
      version: number;
      config: unknown;
      stats: { last60m: { count: number } };
      pool: { instances: { id: string; node: string }[] };
    }
    const infoVia = async (n: ForgeProcess): Promise<Info> => JSON.parse((await cli(n, ["info", "same", "--json"])).stdout) as Info;
    const stable = (i: Info) => ({ version: i.version, config: i.config, requests: i.stats.last60m.count, instances: i.pool.instances.map((x) => `${x.node}/${x.id}`) });
    const [ia, ib] = await until(async () => {
      const both = await Promise.all([infoVia(a), infoVia(b)]);
      return both[0].stats.last60m.count >= 6 && JSON.stringify(stable(both[0])) === JSON.stringify(stable(both[1])) ? both : undefined;
    }, 10_000, "the same info through both nodes");
    expect(stable(ia)).toEqual(stable(ib));
    expect(new Set(ia.pool.instances.map((i) => i.node)).size).toBe(2);

    // Invocation records of both nodes, through either.
    const recordsVia = async (n: ForgeProcess): Promise<string[]> =>
      ((await (await n.api("/v1/functions/same/invocations?limit=100")).json()) as { invocations: { id: string }[] }).invocations.map((r) => r.id).sort();
    const records = await until(async () => {
      const [ra, rb] = await Promise.all([recordsVia(a), recordsVia(b)]);
      return ra.length >= 6 && JSON.stringify(ra) === JSON.stringify(rb) ? ra : undefined;
    }, 10_000, "the same records through both nodes");
    expect(records.length).toBeGreaterThanOrEqual(6);
  }, 60_000);

  test("under a steady load through nginx over both nodes, a deploy through one and a rollback through the other fail no request", async () => {
    await deploy(a, "steady", SOURCE, { V: "1" });
    await until(async () => (await version(b, "steady")) === "1", 10_000, "v1 on B");
    await using lb = await startNginx([`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`]);
    const statuses = new Map<string, number>();
    let done = false;
    const loop = async (): Promise<void> => {
      while (!done) {
        let key: string;
        try {
          const res = await lb.fetch("steady.localhost", "/");
          key = res.status === 200 ? `200 v${((await res.json()) as { v: string }).v}` : `${res.status} ${await res.text()}`;
        } catch (err) {
          key = `error ${err instanceof Error ? err.message : String(err)}`;
        }
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
      }
    };
    const loops = Array.from({ length: 8 }, loop);
    try {
      await until(() => (statuses.get("200 v1") ?? 0) > 50, 10_000, "load on v1");
      await deploy(a, "steady", SOURCE, { V: "2" });
      await until(async () => (await version(a, "steady")) === "2" && (await version(b, "steady")) === "2", 10_000, "v2 on both nodes");
      const rolled = await cli(b, ["rollback", "steady"]);
      expect(rolled.code).toBe(0);
      await until(async () => (await version(a, "steady")) === "1" && (await version(b, "steady")) === "1", 10_000, "v1 again on both nodes");
      const before = statuses.get("200 v1") ?? 0;
      await until(() => (statuses.get("200 v1") ?? 0) > before + 50, 10_000, "load on v1 after the rollback");
    } finally {
      done = true;
      await Promise.all(loops);
    }
    const failed = [...statuses].filter(([k]) => !k.startsWith("200 "));
    expect(failed).toEqual([]);
    expect(statuses.get("200 v2") ?? 0).toBeGreaterThan(0);
  }, 90_000);

  test("with three nodes up, a per-second schedule fires once per tick and an async invocation runs once", async () => {
    await using c = await node();
    using root = sharedDir("forge-cluster-count-");
    const out = sharedFile(root, "calls.jsonl");
    await deploy(a, "counter", COUNTER, { OUT: out });
    await until(async () => (await (await c.api("/v1/functions/counter?local=1")).status) === 200, 10_000, "counter known to C");
    const made = await b.api("/v1/functions/counter/schedules", { method: "POST", body: JSON.stringify({ cron: "* * * * * *" }), headers: { "content-type": "application/json" } });
    expect(made.status).toBe(201);
    const { id } = (await made.json()) as { id: string };
    // Every node arms it (told by the notification; their own re-read is an hour away).
    for (const n of [a, b, c]) {
      await until(async () => ((await (await n.api("/v1/schedules")).json()) as { schedules: { id: string; armed: boolean }[] }).schedules.some((s) => s.id === id && s.armed), 10_000, "the schedule armed on every node");
    }
    const armedAt = Date.now();
    const asyncIds: string[] = [];
    for (const [i, n] of [a, b, c, a, b, c].entries()) {
      const r = await n.api("/v1/functions/counter/invoke?async=1", { method: "POST", body: JSON.stringify({ i }), headers: { "content-type": "application/json" } });
      expect(r.status).toBe(202);
      asyncIds.push(((await r.json()) as { id: string }).id);
    }
    const calls = (): { id: string | null; tick: string | null }[] =>
      existsSync(out)
        ? readFileSync(out, "utf8")
            .split("\n")
            .filter(Boolean)
            .map((l) => JSON.parse(l) as { id: string | null; tick: string | null })
        : [];
    const ticks = (): string[] => calls().flatMap((x) => (x.tick && Date.parse(x.tick) > armedAt + 1000 ? [x.tick] : []));
    await until(() => ticks().length >= 4 && asyncIds.every((i) => calls().some((x) => x.id === i)), 20_000, "four ticks and every async invocation");
    await (await b.api(`/v1/schedules/${id}`, { method: "DELETE" })).text();
    const seen = ticks();
    expect(new Set(seen).size).toBe(seen.length); // no tick twice
    for (const i of asyncIds) expect(calls().filter((x) => x.id === i).length).toBe(1);
  }, 90_000);

  test("kill -9 of one of three nodes under load through nginx fails at most what was in flight on it; it comes back clean", async () => {
    const cData = tempDir("forge-cluster-c-");
    let c = await node({}, cData);
    try {
      await deploy(a, "victim", SOURCE);
      await until(async () => (await version(c, "victim")) === "1", 10_000, "victim on C");
      await using lb = await startNginx([`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`, `127.0.0.1:${c.port}`]);
      const failures: string[] = [];
      let ok = 0;
      let done = false;
      const WORKERS = 8;
      const loop = async (): Promise<void> => {
        while (!done) {
          try {
            const res = await lb.fetch("victim.localhost", "/");
            if (res.status === 200) ok++;
            else failures.push(`${res.status} ${await res.text()}`);
            await res.body?.cancel().catch(() => {});
          } catch (err) {
            failures.push(`error ${err instanceof Error ? err.message : String(err)}`);
          }
        }
      };
      const loops = Array.from({ length: WORKERS }, loop);
      try {
        await until(() => ok > 100, 10_000, "load over three nodes");
        await c.stop("SIGKILL");
        const at = ok;
        await until(() => ok > at + 200, 15_000, "load going on after the kill");
      } finally {
        done = true;
        await Promise.all(loops);
      }
      // At most one request per load worker can have been on C when it died.
      expect(failures.length).toBeLessThanOrEqual(WORKERS);
      console.log(`kill -9 under load: ${ok} ok, ${failures.length} failed ${JSON.stringify(failures.slice(0, 3))}`);
      // Back on the same folder: the same node, serving again.
      c = await node({}, cData);
      await until(async () => (await version(c, "victim")) === "1", 10_000, "victim on C after its restart");
    } finally {
      await c[Symbol.asyncDispose]();
      cData[Symbol.dispose]();
    }
  }, 120_000);
});
