/**
 * Runtime "node": Node-only code (Express through serverless-http and through
 * @codegenie/serverless-express) and a Workers-style module deployed with `"runtime": "node"`
 * answer on Node.js with the same contract as bun functions, and a node function's first
 * request is served by a node stem cell. node-runtime-process.test.ts and
 * node-runtime-docker.test.ts run this suite on each driver.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

const fixtures = join(ROOT, "test/fixtures");

interface PoolView {
  pool: { instances: { id: string; origin: string }[] } | null;
}

interface LogLineView {
  text: string;
  requestId?: string;
}

export function nodeRuntimeSuite(driver: "process" | "docker"): void {
  let forge: ForgeProcess;
  const deployed = new Set<string>();

  beforeAll(async () => {
    // A short keep-alive: an idle function goes back to no instance, so its next request is a first one again.
    forge = await startForge({ env: { FORGE_DRIVER: driver, FORGE_STEM_CELLS: "bun=1,node=1", FORGE_KEEP_ALIVE: "1s", FORGE_START_TIMEOUT: "20s" } });
  });
  afterAll(async () => {
    if (!forge) return;
    for (const name of deployed) await cli(forge, ["delete", name]);
    await forge[Symbol.asyncDispose]();
  });

  const deployOk = async (fixture: string, name: string, ...flags: string[]) => {
    deployed.add(name);
    const r = await cli(forge, ["deploy", join(fixtures, fixture), "--name", name, ...flags]);
    if (r.code !== 0) throw new Error(`deploy of ${fixture} failed:\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const nodeCells = async () => ((await (await forge.api("/readyz")).json()) as { stemCellsByRuntime: { node?: number } }).stemCellsByRuntime.node ?? 0;
  const instances = async (name: string) => ((await (await forge.api(`/v1/functions/${name}`)).json()) as PoolView).pool?.instances ?? [];
  const logs = async (name: string): Promise<LogLineView[]> => ((await (await forge.api(`/v1/functions/${name}/logs?limit=1000`)).json()) as { lines: LogLineView[] }).lines;

  describe(`runtime node on the ${driver} driver`, () => {
    test("Express through serverless-http: routes, query, JSON body, status, headers, two cookies; logs carry the request id", async () => {
      await deployOk("node/express-sls", "n-sls");
      const r = await forge.fn("n-sls", "/hello/ada?x=1");
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual({ hello: "ada", x: "1", node: "node", version: expect.stringMatching(/^\d+\.\d+\.\d+$/) });
      expect(r.headers.getSetCookie()).toEqual(["seen=1; Path=/", "lang=en; Path=/"]);
      const post = await forge.fn("n-sls", "/echo", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ a: [1, 2] }) });
      expect(post.status).toBe(201);
      expect(post.headers.get("x-echo")).toBe("yes");
      expect(await post.json()).toEqual({ got: { a: [1, 2] } });
      const logged = await forge.fn("n-sls", "/log");
      expect(await logged.text()).toBe("logged");
      const id = logged.headers.get("x-forge-request-id") ?? "missing";
      await until(async () => (await logs("n-sls")).some((l) => l.requestId === id && l.text === "express handled /log"), 15_000, "the tagged log line");
    });

    test("Express through @codegenie/serverless-express", async () => {
      await deployOk("node/express-codegenie", "n-codegenie");
      expect(await (await forge.fn("n-codegenie", "/hello/grace?x=2")).json()).toEqual({ hello: "grace", x: "2", node: "node" });
      const post = await forge.fn("n-codegenie", "/echo", { method: "POST", headers: { "content-type": "application/json" }, body: '{"n":3}' });
      expect(post.status).toBe(201);
      expect(await post.json()).toEqual({ got: { n: 3 } });
    });

    test("a Workers-style module: env from forge.json, ctx.waitUntil, a POST body, node: builtins", async () => {
      await deployOk("node/workers", "n-workers");
      const r = await forge.fn("n-workers", "/x", { method: "POST", body: "abc" });
      const body = (await r.json()) as { runtime: string };
      expect(body).toMatchObject({ path: "/x", greeting: "hi from forge.json", sha: "ba7816bf" });
      expect(body.runtime).toStartWith("node ");
      await until(async () => ((await (await forge.fn("n-workers", "/waited")).json()) as { waited: number }).waited >= 1, 10_000, "the waitUntil work");
    });

    test("an existing Lambda fixture runs unchanged with --runtime node (Fastify through @fastify/aws-lambda)", async () => {
      await deployOk("compat/fastify-lambda", "n-fastify", "--runtime", "node");
      expect(await (await forge.fn("n-fastify", "/hello/linus?x=9")).json()).toEqual({ hello: "linus", x: "9" });
    });

    test("a node function's first request is served by a node stem cell", async () => {
      await deployOk("node/workers", "n-first");
      // The deploy's instance idles out (keep-alive 1 s): the function is back to no instance.
      await until(async () => (await instances("n-first")).length === 0, 20_000, "the idle instance to retire");
      await until(async () => (await nodeCells()) >= 1, 30_000, "a node stem cell");
      const r = await forge.fn("n-first", "/first");
      expect(r.status).toBe(200);
      expect(r.headers.get("x-forge-start")).toBe("cell");
      expect(((await r.json()) as { runtime: string }).runtime).toStartWith("node ");
    });

    test("a node module that throws at load fails its deploy with why, and the version before keeps serving", async () => {
      await deployOk("node/workers", "n-broken");
      using dir = tempDir("forge-node-broken-");
      writeFileSync(join(dir, "index.mjs"), 'throw new Error("no config at load");\nexport default { fetch: () => new Response("never") };\n');
      writeFileSync(join(dir, "forge.json"), '{ "runtime": "node" }');
      const bad = await cli(forge, ["deploy", dir, "--name", "n-broken"]);
      expect(bad.code).not.toBe(0);
      expect(bad.stdout + bad.stderr).toContain("no config at load");
      expect((await forge.fn("n-broken", "/still")).status).toBe(200);
    });
  });
}
