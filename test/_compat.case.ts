/**
 * Real functions run unchanged: code written for AWS Lambda and Cloudflare Workers, with the
 * real packages people use (Fastify through @fastify/aws-lambda, middy, hono/aws-lambda,
 * itty-router, Hono middleware), deployed with the real CLI to a real forge, on one driver.
 * compat-process.test.ts and compat-docker.test.ts run this same suite.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { cli, ROOT, startForge, until, type ForgeProcess } from "./_helpers.ts";

const fixtures = join(ROOT, "test/fixtures/compat");

interface LogLineView {
  text: string;
  requestId?: string;
}

/** Sends raw bytes to forge's port and resolves with everything it answers until it closes. */
async function rawRequest(port: number, bytes: string): Promise<string> {
  const { promise, resolve, reject } = Promise.withResolvers<string>();
  let out = "";
  await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      open: (s) => void s.write(bytes),
      data: (_s, chunk) => void (out += chunk.toString("latin1")),
      close: () => resolve(out),
      error: (_s, err) => reject(err),
    },
  });
  return promise;
}

export function compatSuite(driver: "process" | "docker", options: { dataDir?: string } = {}): void {
  let forge: ForgeProcess;
  const deployed = new Set<string>();

  beforeAll(async () => {
    forge = await startForge({ ...(options.dataDir ? { dataDir: options.dataDir } : {}), env: { FORGE_DRIVER: driver, FORGE_STEM_CELLS: "1", FORGE_START_TIMEOUT: "10s" } });
  });
  afterAll(async () => {
    if (!forge) return;
    for (const name of deployed) await cli(forge, ["delete", name]);
    await forge[Symbol.asyncDispose]();
  });

  /** Deploys a fixture folder under `name`; resolves with the CLI's result. */
  const deploy = async (fixture: string, name: string, ...flags: string[]) => {
    deployed.add(name);
    return cli(forge, ["deploy", join(fixtures, fixture), "--name", name, ...flags]);
  };
  const deployOk = async (fixture: string, name: string, ...flags: string[]) => {
    const r = await deploy(fixture, name, ...flags);
    if (r.code !== 0) throw new Error(`deploy of ${fixture} failed:\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const logs = async (name: string): Promise<LogLineView[]> => ((await (await forge.api(`/v1/functions/${name}/logs?limit=1000`)).json()) as { lines: LogLineView[] }).lines;
  const invoke = (name: string, payload: unknown) =>
    forge.api(`/v1/functions/${name}/invoke`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(payload) });

  describe(`real packages on the ${driver} driver`, () => {
    test("Fastify through @fastify/aws-lambda (a CommonJS index.cjs)", async () => {
      await deployOk("fastify-lambda", "c-fastify");
      const r = await forge.fn("c-fastify", "/hello/ada?x=1");
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual({ hello: "ada", x: "1" });
      const post = await forge.fn("c-fastify", "/echo", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ a: [1, 2] }) });
      expect(await post.json()).toEqual({ got: { a: [1, 2] } });
    });

    test("a middy chain: JSON body parser and HTTP errors", async () => {
      await deployOk("middy", "c-middy");
      const ok = await forge.fn("c-middy", "/", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: "grace" }) });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ hi: "grace" });
      const bad = await forge.fn("c-middy", "/", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({}) });
      expect(bad.status).toBe(422);
      expect(await bad.text()).toContain("name is required");
    });

    test("Hono through hono/aws-lambda", async () => {
      await deployOk("hono-lambda", "c-honolambda");
      expect(await (await forge.fn("c-honolambda", "/hi/linus?q=z")).json()).toEqual({ hi: "linus", q: "z" });
      const post = await forge.fn("c-honolambda", "/echo", { method: "POST", headers: { "content-type": "application/json" }, body: '{"n":3}' });
      expect(await post.json()).toEqual({ got: { n: 3 } });
    });

    test("itty-router's AutoRouter", async () => {
      await deployOk("itty", "c-itty");
      expect(await (await forge.fn("c-itty", "/items/7?q=s")).json()).toEqual({ id: "7", q: "s" });
      const post = await forge.fn("c-itty", "/items", { method: "POST", body: '{"k":"v"}' });
      expect(await post.json()).toEqual({ created: { k: "v" } });
      expect((await forge.fn("c-itty", "/nowhere")).status).toBe(404);
    });

    test("Hono with middleware: CORS, basic auth, ETag", async () => {
      await deployOk("hono-mw", "c-honomw");
      const pub = await forge.fn("c-honomw", "/", { headers: { origin: "https://example.com" } });
      expect(await pub.text()).toBe("public");
      expect(pub.headers.get("access-control-allow-origin")).toBe("https://example.com");
      const etag = pub.headers.get("etag") ?? "";
      expect(etag).not.toBe("");
      expect((await forge.fn("c-honomw", "/", { headers: { "if-none-match": etag } })).status).toBe(304);
      expect((await forge.fn("c-honomw", "/admin/secret")).status).toBe(401);
      const authed = await forge.fn("c-honomw", "/admin/secret", { headers: { authorization: `Basic ${btoa("ada:lovelace")}` } });
      expect(await authed.json()).toEqual({ secret: 42 });
    });

    test("a CommonJS Lambda handler reads the template next to it through __dirname", async () => {
      await deployOk("cjs-template", "c-template");
      const r = await forge.fn("c-template", "/?name=Ada");
      expect(r.status).toBe(200);
      expect(await r.text()).toBe("<h1>Hello, Ada!</h1>\n");
    });
  });

  describe(`Lambda semantics on the ${driver} driver`, () => {
    test("four concurrent calls to a handler keeping the user in a module variable each get their own answer", async () => {
      const d = await deployOk("lambda-user", "c-user", "--json");
      expect(JSON.parse(d.stdout).concurrency).toBe(1);
      const users = ["alice", "bob", "carol", "dave"];
      const answers = await Promise.all(users.map(async (u) => (await (await forge.fn("c-user", `/?user=${u}`)).json()) as { user: string }));
      expect(answers.map((a) => a.user)).toEqual(users);
    });

    test("invoke hands the JSON payload itself to a Lambda handler; HTTP gets the API Gateway v2 event", async () => {
      await deployOk("lambda-context", "c-context");
      // The answer of an invoke is the handler's result itself, as `aws lambda invoke` gives it.
      const inv = (await (await invoke("c-context", { order: 42, items: ["a"] })).json()) as { statusCode: number; body: string };
      expect(inv.statusCode).toBe(200);
      expect(JSON.parse(inv.body).event).toEqual({ order: 42, items: ["a"] });
      const cliInv = await cli(forge, ["invoke", "c-context", "--data", '{"via":"cli"}']);
      expect(cliInv.code).toBe(0);
      expect(JSON.parse(JSON.parse(cliInv.stdout).body).event).toEqual({ via: "cli" });
      // Two header lines of one name, as a raw client sends them (fetch would join them itself).
      const raw = await rawRequest(forge.port, `GET /path HTTP/1.1\r\nHost: c-context.localhost\r\nX-Multi: a\r\nX-Multi: b\r\nConnection: close\r\n\r\n`);
      const http = JSON.parse(raw.slice(raw.indexOf("\r\n\r\n") + 4)) as { event: { rawPath: string; cookie: string } };
      expect(http.event.rawPath).toBe("/path");
      // Both lines arrive, joined (API Gateway joins with ","; Bun.serve, under the shim, with ", ": README's known differences).
      expect(http.event.cookie.replace(/ /g, "")).toBe("a,b");
    });

    test("async invocations and schedules hand the payload itself to a Lambda handler", async () => {
      const queued = await forge.api("/v1/functions/c-context/invoke?async=1", { method: "POST", headers: { "content-type": "application/json" }, body: '{"async":true}' });
      expect(queued.status).toBe(202);
      const { id } = (await queued.json()) as { id: string };
      const done = await until(async () => {
        const r = (await (await forge.api(`/v1/invocations/${id}`)).json()) as { status: string; result: { body: string } | null };
        return r.status === "succeeded" ? r : undefined;
      }, 15_000, "the async invocation");
      expect(JSON.parse((JSON.parse(done.result?.body ?? "{}") as { body: string }).body).event).toEqual({ async: true });
      const s = await forge.api("/v1/functions/c-context/schedules", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ cron: "* * * * * *", data: { job: "nightly" } }) });
      const { id: schedule } = (await s.json()) as { id: string };
      try {
        await until(async () => (await logs("c-context")).some((l) => l.text === 'event {"job":"nightly"}'), 15_000, "the tick's payload as the event");
      } finally {
        await forge.api(`/v1/schedules/${schedule}`, { method: "DELETE" });
      }
    });

    test("the context and env are Lambda's: timeout, names, memory, a unique awsRequestId never taken from the client", async () => {
      const r1 = await forge.fn("c-context", "/", { headers: { "x-forge-request-id": "client-chosen-id-1" } });
      const r2 = await forge.fn("c-context", "/", { headers: { "x-forge-request-id": "client-chosen-id-1" } });
      const [a, b] = (await Promise.all([r1.json(), r2.json()])) as Record<string, unknown>[];
      expect(a?.awsRequestId).toBe(r1.headers.get("x-forge-request-id") ?? "missing");
      expect(a?.awsRequestId).not.toBe("client-chosen-id-1");
      expect(a?.awsRequestId).not.toBe(b?.awsRequestId);
      expect(a?.functionName).toBe("c-context");
      expect(a?.memoryLimitInMB).toBe("192");
      expect(String(a?.invokedFunctionArn)).toMatch(/^arn:aws:lambda:[a-z0-9-]+:\d{12}:function:c-context$/);
      const remaining = Number(a?.remaining);
      expect(remaining).toBeGreaterThan(5_000);
      expect(remaining).toBeLessThanOrEqual(7_000);
      const env = a?.env as Record<string, string>;
      expect(env.AWS_LAMBDA_FUNCTION_NAME).toBe("c-context");
      expect(env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE).toBe("192");
      expect(env.AWS_REGION).toBeTruthy();
      expect(env.LAMBDA_TASK_ROOT).toBe(String(a?.cwd));
    });

    test('forge.json "handler": "api.hello" picks that export of api.mjs', async () => {
      await deployOk("handler-string", "c-handler");
      const r = (await (await invoke("c-handler", { n: 1 })).json()) as { statusCode: number; body: string };
      expect(JSON.parse(r.body)).toEqual({ picked: "hello", payload: { n: 1 } });
    });

    test("module.exports = app with module.exports.handler is called as a Lambda handler", async () => {
      await deployOk("cjs-app-handler", "c-apphandler");
      expect(await (await forge.fn("c-apphandler", "/x")).json()).toEqual({ via: "handler", path: "/x" });
    });

    test("package.json main is the entry when there is no index", async () => {
      await deployOk("pkg-main", "c-pkgmain");
      expect(await (await forge.fn("c-pkgmain", "/")).text()).toBe("from package.json main");
    });

    test("awslambda.streamifyResponse streams with the status and headers of HttpResponseStream.from", async () => {
      await deployOk("lambda-stream", "c-stream");
      const r = await forge.fn("c-stream", "/");
      expect(r.status).toBe(201);
      expect(r.headers.get("x-streamed")).toBe("yes");
      expect(await r.text()).toBe("one,two");
    });
  });

  describe(`Workers semantics on the ${driver} driver`, () => {
    test("env holds only the function's settings; scheduled(controller, env, ctx) runs on cron ticks", async () => {
      await deployOk("workers-cron", "c-cron");
      expect(await (await forge.fn("c-cron", "/")).json()).toEqual({ env: ["LABEL"], label: "cron-label" });
      const s = await forge.api("/v1/functions/c-cron/schedules", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ cron: "* * * * * *" }) });
      expect(s.status).toBe(201);
      const { id } = (await s.json()) as { id: string };
      try {
        const line = await until(async () => (await logs("c-cron")).find((l) => l.text.startsWith("scheduled * * * * * * at ")), 15_000, "a scheduled() log line");
        expect(line.text).toMatch(/at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/);
        await until(async () => (await logs("c-cron")).some((l) => l.text === "scheduled waitUntil cron-label"), 10_000, "the tick's waitUntil");
      } finally {
        await forge.api(`/v1/schedules/${id}`, { method: "DELETE" });
      }
    });

    test("ctx.waitUntil work finishes although a deploy drains the instance right after the response", async () => {
      const r = await forge.fn("c-cron", "/later?ms=700&tag=drained");
      expect(await r.text()).toBe("accepted");
      // A new version takes over at once; the old instance must live until its work is done.
      await deployOk("workers-cron", "c-cron", "--env", "LABEL=v2");
      await until(async () => (await logs("c-cron")).some((l) => l.text === "waitUntil done drained"), 15_000, "the waitUntil line of the drained instance");
    });
  });

  describe(`verified deploys and resilient instances on the ${driver} driver`, () => {
    test("a module that throws at load fails the deploy; the previous version serves a steady load with no failure", async () => {
      await deployOk("itty", "c-verify");
      let stop = false;
      let failures = 0;
      let served = 0;
      const load = (async () => {
        while (!stop) {
          const results = await Promise.all([0, 1, 2, 3].map(() => forge.fn("c-verify", "/items/1").then((r) => r.status, () => 0)));
          for (const status of results) status === 200 ? served++ : failures++;
        }
      })();
      let d: Awaited<ReturnType<typeof deploy>>;
      try {
        await until(() => served > 20, 10_000, "load running");
        d = await deploy("load-throws", "c-verify");
        const after = served;
        await until(() => served > after + 20, 10_000, "load after the failed deploy");
      } finally {
        stop = true;
        await load;
      }
      expect(d.code).toBe(1);
      expect(d.stdout + d.stderr).toContain("MUST_BE_SET is not set");
      expect(failures).toBe(0);
      const versions = JSON.parse((await cli(forge, ["versions", "c-verify", "--json"])).stdout) as { version: number; active: boolean; status: string }[];
      expect(versions.map((v) => [v.version, v.active, v.status])).toEqual([
        [2, false, "failed"],
        [1, true, "ready"],
      ]);
      const table = await cli(forge, ["versions", "c-verify"]);
      expect(table.stdout).toContain("failed");
    });

    test("a first deploy that exports nothing fails, names the exports and leaves no active version", async () => {
      const d = await deploy("exports-nothing", "c-nothing");
      expect(d.code).toBe(1);
      expect(d.stdout + d.stderr).toContain("notAHandler");
      expect(d.stdout + d.stderr).toContain("no active version");
      expect((await forge.fn("c-nothing", "/")).status).toBe(404);
    });

    test("a module that never finishes loading fails its deploy after FORGE_START_TIMEOUT; the next deploy goes ahead", async () => {
      const hung = await deploy("load-hangs", "c-hang");
      expect(hung.code).toBe(1);
      expect(hung.stdout + hung.stderr).toMatch(/not ready within|did not finish loading/);
      const ok = await deployOk("itty", "c-hang");
      expect(ok.stdout).toContain("version 2");
      expect((await forge.fn("c-hang", "/items/3")).status).toBe(200);
    }, 60_000);

    test("a delete while a deploy verifies waits for it: afterwards nothing serves the function", async () => {
      const deploying = deploy("slow-load", "c-race");
      await until(async () => {
        const r = await forge.api("/v1/functions/c-race/versions");
        return r.ok && ((await r.json()) as { versions: { status: string }[] }).versions.some((v) => v.status === "starting");
      }, 15_000, "the version being verified");
      const del = await forge.api("/v1/functions/c-race", { method: "DELETE" });
      expect((await deploying).code).toBe(0);
      expect(del.status).toBe(200);
      expect((await forge.fn("c-race", "/")).status).toBe(404);
    });

    test("an error answered before the function carries forge's request id, never the client's", async () => {
      const r = await fetch(`${forge.url}/fn/c-nowhere/x`, { headers: { "x-forge-request-id": "client-chosen-id-123" } });
      expect(r.status).toBe(404);
      expect(r.headers.get("x-forge-request-id")).not.toBe("client-chosen-id-123");
    });

    test("an uncaught exception from one request's timer fails at most that request; the instance and the others go on", async () => {
      await deployOk("resilient", "c-resilient", "--min-warm", "1");
      const slow = forge.fn("c-resilient", "/slow");
      const boom = await forge.fn("c-resilient", "/boom");
      expect((await slow).status).toBe(200);
      expect(await (await slow).text()).toBe("slow ok");
      expect([200, 500]).toContain(boom.status);
      const r = await forge.fn("c-resilient", "/");
      expect(await r.text()).toBe("ok");
      // The same instance served throughout: no start since the first.
      expect(r.headers.get("x-forge-start")).toBe("warm");
      const info = (await (await forge.api("/v1/functions/c-resilient")).json()) as { pool?: { instances: unknown[] } };
      expect(info.pool?.instances.length).toBe(1);
      const line = await until(async () => (await logs("c-resilient")).find((l) => l.text.includes("a timer threw")), 10_000, "the error logged");
      expect(line.requestId).toBe(boom.headers.get("x-forge-request-id") ?? "missing");
    });

    test("a body stream that errors before its first byte is forge's JSON 500, not an HTML page", async () => {
      await deployOk("stream-error", "c-streamerr");
      const r = await forge.fn("c-streamerr", "/");
      expect(r.status).toBe(500);
      expect(r.headers.get("content-type")).toContain("application/json");
      const body = (await r.json()) as { error: { code: string } };
      expect(body.error.code).toBe("function_error");
    });
  });
}
