import { describe, expect, test } from "bun:test";
import { mkdir, mkdtemp, realpath, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseLogLine, readLines } from "../../src/pool/_log-parse.ts";
import {
  BUNDLE_FILE,
  CONTROL_DRAIN,
  CONTROL_HEADER,
  CONTROL_HEALTH,
  CONTROL_INVOKE,
  CONTROL_SCHEDULED,
  CONTROL_SPECIALIZE,
} from "../../src/pool/driver.ts";
import type { ShimRuntime } from "../../src/pool/driver.ts";
import { type HealthInfo, waitReady } from "../../src/pool/instance-client.ts";
import { buildNodeShim } from "../../src/build/node-shim.ts";
import { TestWebSocket, upgradeRequestHeaders } from "../../test/_ws-client.ts";

/**
 * The shim's contract, run on each runtime: runtimes/js/shim.test.ts (bun) and
 * runtimes/node/shim.test.ts (node, the shim bundled by src/build/node-shim.ts).
 */
const SHIM = join(import.meta.dir, "shim.ts");
let runtime: ShimRuntime = "bun";
let nodeShim: Promise<string> | undefined;

/** The shim's command line on the suite's runtime, as the process driver runs it. */
async function shimCommand(): Promise<string[]> {
  if (runtime === "bun") return [process.execPath, "--no-install", "--no-env-file", SHIM];
  nodeShim ??= buildNodeShim(join(tmpdir(), "forge-test-node-shim"));
  return [Bun.which("node") ?? "node", await nodeShim];
}

interface Line {
  stream: "stdout" | "stderr";
  requestId?: string;
  text: string;
}

interface StartOptions {
  /** More FORGE_* settings (FORGE_HANDLER, FORGE_TIMEOUT_MS, ...), over the defaults. */
  settings?: Record<string, string>;
  /** Put the bundle in a function folder (FORGE_FUNCTION_DIR) holding these files too. */
  files?: Record<string, string>;
}

/** Runs the shim as the process driver would, with `code` as its bundle (or generic without). */
async function startShim(code?: string, env: Record<string, string> = {}, options: StartOptions = {}) {
  const dir = await mkdtemp(join(tmpdir(), "forge-shim-"));
  const socketPath = join(dir, "s.sock");
  const token = crypto.randomUUID();
  const functionDir = options.files ? join(dir, "function") : undefined;
  let bundle: string | undefined;
  if (functionDir) {
    await mkdir(functionDir);
    for (const [name, text] of Object.entries(options.files ?? {})) await writeFile(join(functionDir, name), text);
  }
  if (code !== undefined) {
    bundle = join(functionDir ?? dir, functionDir ? BUNDLE_FILE : "fn.mjs");
    await writeFile(bundle, code);
  }
  const proc = Bun.spawn(await shimCommand(), {
    cwd: dir,
    env: {
      PATH: "/usr/bin:/bin",
      ...env,
      FORGE_SOCKET: socketPath,
      FORGE_CONTROL_TOKEN: token,
      FORGE_INSTANCE_ID: "test",
      FORGE_WORK_DIR: dir,
      ...(bundle ? { FORGE_BUNDLE: bundle, FORGE_FUNCTION: "fn", FORGE_VERSION: "7" } : {}),
      ...(functionDir ? { FORGE_FUNCTION_DIR: functionDir } : {}),
      ...options.settings,
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  const lines: Line[] = [];
  const waiters = new Set<() => void>();
  const pump = async (stream: ReadableStream<Uint8Array>, name: Line["stream"]) => {
    for await (const raw of readLines(stream)) {
      lines.push({ stream: name, ...parseLogLine(raw) });
      for (const wake of waiters) wake();
    }
  };
  void pump(proc.stdout, "stdout");
  void pump(proc.stderr, "stderr");
  const shim = {
    socketPath,
    token,
    lines,
    dir,
    functionDir,
    proc,
    request(path: string, init: RequestInit = {}) {
      return fetch(`http://fn.localhost${path}`, { ...init, unix: socketPath });
    },
    control(path: string, init: RequestInit = {}) {
      return fetch(`http://fn.localhost${path}`, {
        ...init,
        headers: { [CONTROL_HEADER]: token, ...(init.headers as Record<string, string>) },
        unix: socketPath,
      });
    },
    /** Resolves once a line matching `match` was written (fails the test by its timeout otherwise). */
    async line(match: (line: Line) => boolean): Promise<Line> {
      for (;;) {
        const found = lines.find(match);
        if (found) return found;
        await new Promise<void>((resolve) => {
          const wake = () => {
            waiters.delete(wake);
            resolve();
          };
          waiters.add(wake);
        });
      }
    },
    async [Symbol.asyncDispose]() {
      proc.kill("SIGKILL");
      await proc.exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitReady({ socketPath }, token, { exited: proc.exited, timeoutMs: 10_000 });
  } catch (err) {
    await shim[Symbol.asyncDispose]();
    throw err;
  }
  return shim;
}

const ECHO = `
export default {
  async fetch(request, env, ctx) {
    const url = new URL(request.url);
    return Response.json({
      method: request.method,
      url: request.url,
      path: url.pathname,
      query: url.search,
      headers: Object.fromEntries(request.headers),
      body: Buffer.from(await request.arrayBuffer()).toString("base64"),
      greeting: env.GREETING,
      requestId: ctx.requestId,
      hasWaitUntil: typeof ctx.waitUntil === "function" && typeof ctx.passThroughOnException === "function",
    });
  },
};
`;

/** Registers the whole suite against the shim on `which`. */
export function shimSuite(which: ShimRuntime): void {
runtime = which;
describe("shim: export styles", () => {
  test("a default export with fetch(request, env, ctx) gets the request unchanged", async () => {
    await using shim = await startShim(ECHO, { GREETING: "hi" });
    const body = new Uint8Array([0, 1, 2, 250, 255, 10, 13]);
    const response = await shim.request("/a/b%20c/?x=1&x=2&y=", {
      method: "PATCH",
      headers: { "x-thing": "value", "content-type": "application/octet-stream", "x-forge-request-id": "rid-1" },
      body,
    });
    expect(response.status).toBe(200);
    const echo = (await response.json()) as Record<string, unknown>;
    expect(echo).toMatchObject({
      method: "PATCH",
      url: "http://fn.localhost/a/b%20c/?x=1&x=2&y=",
      path: "/a/b%20c/",
      query: "?x=1&x=2&y=",
      greeting: "hi",
      requestId: "rid-1",
      hasWaitUntil: true,
      body: Buffer.from(body).toString("base64"),
    });
    expect(echo.headers).toMatchObject({ "x-thing": "value", "x-forge-request-id": "rid-1", host: "fn.localhost" });
  });

  test("a request without an id gets one", async () => {
    await using shim = await startShim(ECHO);
    const echo = (await (await shim.request("/")).json()) as { requestId: string; headers: Record<string, string> };
    expect(echo.requestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(echo.headers["x-forge-request-id"]).toBe(echo.requestId);
  });

  test("a bare default-exported function", async () => {
    await using shim = await startShim(`export default (request) => new Response("bare " + request.method, { status: 201 });`);
    const response = await shim.request("/", { method: "DELETE" });
    expect(response.status).toBe(201);
    expect(await response.text()).toBe("bare DELETE");
  });

  test("an app object whose fetch is an instance property (Hono's shape)", async () => {
    await using shim = await startShim(`
      class App {
        #routes = new Map([["/hi", () => new Response("hello")]]);
        fetch = (request) => (this.#routes.get(new URL(request.url).pathname) ?? (() => new Response("nope", { status: 404 })))();
      }
      export default new App();
    `);
    expect(await (await shim.request("/hi")).text()).toBe("hello");
    expect((await shim.request("/else")).status).toBe(404);
  });

  test("a real Hono app, bundled", async () => {
    const dir = await mkdtemp(join(tmpdir(), "forge-hono-"));
    try {
      const entry = join(dir, "index.ts");
      await writeFile(
        entry,
        `import { Hono } from ${JSON.stringify(Bun.resolveSync("hono", import.meta.dir))};
         const app = new Hono();
         app.get("/hi/:name", (c) => c.json({ name: c.req.param("name"), q: c.req.query("q"), env: c.env.GREETING }));
         app.post("/echo", async (c) => c.text(await c.req.text()));
         export default app;`,
      );
      const built = await Bun.build({ entrypoints: [entry], target: runtime, format: "esm" });
      expect(built.success).toBe(true);
      const code = await built.outputs[0]?.text();
      await using shim = await startShim(code, { GREETING: "hey" });
      expect(await (await shim.request("/hi/ada?q=1")).json()).toEqual({ name: "ada", q: "1", env: "hey" });
      expect(await (await shim.request("/echo", { method: "POST", body: "round trip" })).text()).toBe("round trip");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a module with none of the known exports fails with a clear message", async () => {
    const started = startShim(`export const answer = 42;`);
    await expect(started).rejects.toThrow("exited before it was ready");
  });
});

describe("shim: Lambda handlers", () => {
  const LAMBDA = `
    export async function handler(event, context) {
      if (event.rawPath === "/raw") return { statusCode: 201, headers: { "x-a": "b", "content-type": "text/plain" }, body: "made", cookies: ["a=1", "b=2"] };
      if (event.rawPath === "/binary") return { statusCode: 200, headers: { "content-type": "application/octet-stream" }, body: Buffer.from([1, 2, 255]).toString("base64"), isBase64Encoded: true };
      if (event.rawPath === "/plain") return { hello: "world" };
      if (event.rawPath === "/string") return "just text";
      return {
        statusCode: 200,
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          event,
          context: {
            awsRequestId: context.awsRequestId,
            functionName: context.functionName,
            functionVersion: context.functionVersion,
            remaining: context.getRemainingTimeInMillis(),
          },
        }),
      };
    }
  `;

  test("the request becomes an API Gateway v2 event", async () => {
    await using shim = await startShim(LAMBDA);
    const response = await shim.request("/items/1?x=1&x=2&y=z", {
      headers: { cookie: "s=abc; t=def", "x-multi": "one", "user-agent": "forge-test", "x-forge-request-id": "lam-1" },
    });
    const { event, context } = (await response.json()) as {
      event: Record<string, unknown> & { requestContext: Record<string, unknown> };
      context: Record<string, unknown>;
    };
    expect(event).toMatchObject({
      version: "2.0",
      routeKey: "$default",
      rawPath: "/items/1",
      rawQueryString: "x=1&x=2&y=z",
      cookies: ["s=abc", "t=def"],
      queryStringParameters: { x: "1,2", y: "z" },
      isBase64Encoded: false,
    });
    expect(event.headers).toMatchObject({ "x-multi": "one", "user-agent": "forge-test" });
    expect(event.headers).not.toHaveProperty("cookie");
    expect(event).not.toHaveProperty("body");
    expect(event.requestContext).toMatchObject({
      http: { method: "GET", path: "/items/1", protocol: "HTTP/1.1", sourceIp: "127.0.0.1", userAgent: "forge-test" },
      requestId: "lam-1",
    });
    expect(typeof event.requestContext.timeEpoch).toBe("number");
    expect(context).toMatchObject({ awsRequestId: "lam-1", functionName: "fn", functionVersion: "7" });
    expect(context.remaining).toBeGreaterThan(0);
  });

  test("a text body arrives as text, a binary one as base64", async () => {
    await using shim = await startShim(LAMBDA);
    const text = (await (
      await shim.request("/post", { method: "POST", headers: { "content-type": "application/json" }, body: '{"a":1}' })
    ).json()) as { event: { body: string; isBase64Encoded: boolean; requestContext: { http: { method: string } } } };
    expect(text.event).toMatchObject({ body: '{"a":1}', isBase64Encoded: false, requestContext: { http: { method: "POST" } } });
    const bytes = new Uint8Array([0, 159, 146, 150]);
    const binary = (await (
      await shim.request("/post", { method: "PUT", headers: { "content-type": "image/png" }, body: bytes })
    ).json()) as { event: { body: string; isBase64Encoded: boolean } };
    expect(binary.event).toEqual(expect.objectContaining({ body: Buffer.from(bytes).toString("base64"), isBase64Encoded: true }));
  });

  test("statusCode, headers, cookies and base64 bodies map back to the response", async () => {
    await using shim = await startShim(LAMBDA);
    const raw = await shim.request("/raw");
    expect(raw.status).toBe(201);
    expect(raw.headers.get("x-a")).toBe("b");
    expect(raw.headers.getSetCookie()).toEqual(["a=1", "b=2"]);
    expect(await raw.text()).toBe("made");
    const binary = await shim.request("/binary");
    expect(new Uint8Array(await binary.arrayBuffer())).toEqual(new Uint8Array([1, 2, 255]));
  });

  test("a plain object is a JSON 200 and a string a text 200", async () => {
    await using shim = await startShim(LAMBDA);
    const plain = await shim.request("/plain");
    expect(plain.status).toBe(200);
    expect(plain.headers.get("content-type")).toContain("application/json");
    expect(await plain.json()).toEqual({ hello: "world" });
    const text = await shim.request("/string");
    expect(text.headers.get("content-type")).toContain("text/plain");
    expect(await text.text()).toBe("just text");
  });

  test("a callback-style handler", async () => {
    await using shim = await startShim(
      `export const handler = (event, context, callback) => { setTimeout(() => callback(null, { statusCode: 202, body: "later" }), 1); };`,
    );
    const response = await shim.request("/");
    expect(response.status).toBe(202);
    expect(await response.text()).toBe("later");
  });
});

describe("shim: errors and streaming", () => {
  test("a throw becomes a 500 JSON error and the stack goes to stderr under the request id", async () => {
    await using shim = await startShim(`
      export default {
        async fetch(request) {
          if (new URL(request.url).pathname === "/async") await Promise.reject(new Error("async boom"));
          throw new Error("sync boom");
        },
      };
    `);
    for (const [path, message] of [["/sync", "sync boom"], ["/async", "async boom"]] as const) {
      const response = await shim.request(path, { headers: { "x-forge-request-id": `err${path.slice(1)}` } });
      expect(response.status).toBe(500);
      expect(await response.json()).toEqual({
        error: { code: "function_error", message, hint: "see forge logs fn for the stack" },
      });
      const line = await shim.line((l) => l.stream === "stderr" && l.text.includes(message));
      expect(line.requestId).toBe(`err${path.slice(1)}`);
      // Every line of the stack carries the id, so `forge logs` can group it.
      await shim.line((l) => l.requestId === `err${path.slice(1)}` && l.text.trimStart().startsWith("at "));
    }
  });

  test("something other than a Response is a 500 that says what came back", async () => {
    await using shim = await startShim(`export default () => ({ not: "a response" });`);
    const response = await shim.request("/");
    expect(response.status).toBe(500);
    expect(((await response.json()) as { error: { message: string } }).error.message).toContain("instead of a Response");
  });

  test("a streamed response arrives chunk by chunk, in order", async () => {
    await using shim = await startShim(`
      let release;
      const released = new Promise((resolve) => (release = resolve));
      export default (request) => {
        if (new URL(request.url).pathname === "/release") { release(); return new Response("released"); }
        const encoder = new TextEncoder();
        return new Response(new ReadableStream({
          async start(controller) {
            controller.enqueue(encoder.encode("first;"));
            await released;
            for (const chunk of ["second;", "third;"]) controller.enqueue(encoder.encode(chunk));
            controller.close();
          },
        }), { headers: { "content-type": "text/plain" } });
      };
    `);
    const response = await shim.request("/stream");
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    // The first chunk comes while the function still holds the rest: nothing was buffered.
    const first = await reader.read();
    expect(decoder.decode(first.value)).toBe("first;");
    expect(await (await shim.request("/release")).text()).toBe("released");
    let rest = "";
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += decoder.decode(r.value, { stream: true });
    expect(rest).toBe("second;third;");
  });
});

describe("shim: environment and control routes", () => {
  test("forge's FORGE_* settings are gone before the function runs", async () => {
    await using shim = await startShim(
      `const atLoad = Object.keys(process.env);
       export default (request) => Response.json({ atLoad, now: Object.keys(process.env), bun: Object.keys(typeof Bun === "undefined" ? process.env : Bun.env) });`,
      { GREETING: "x", FORGE_URL: "http://forge.example" },
    );
    const keys = (await (await shim.request("/")).json()) as Record<string, string[]>;
    const shimVars = ["FORGE_SOCKET", "FORGE_CONTROL_TOKEN", "FORGE_INSTANCE_ID", "FORGE_BUNDLE", "FORGE_WORK_DIR", "FORGE_FUNCTION", "FORGE_VERSION"];
    for (const list of Object.values(keys)) {
      expect(list).toContain("GREETING");
      // A variable of the function's own that merely starts with FORGE_ stays.
      expect(list).toContain("FORGE_URL");
      for (const name of shimVars) expect(list).not.toContain(name);
    }
  });

  test("control routes answer only with the token; without it they are the function's", async () => {
    await using shim = await startShim(`export default (request) => new Response("function saw " + new URL(request.url).pathname);`);
    const health = await shim.control(CONTROL_HEALTH);
    expect(await health.json()).toMatchObject({ ok: true, specialized: true, function: "fn", version: 7 });
    expect(await (await shim.request(CONTROL_HEALTH)).text()).toBe(`function saw ${CONTROL_HEALTH}`);
    const wrong = await shim.request(CONTROL_HEALTH, { headers: { [CONTROL_HEADER]: "x".repeat(shim.token.length) } });
    expect(await wrong.text()).toBe(`function saw ${CONTROL_HEALTH}`);
    const specialize = await shim.request(CONTROL_SPECIALIZE, { method: "POST", body: "{}" });
    expect(await specialize.text()).toBe(`function saw ${CONTROL_SPECIALIZE}`);
  });

  test("the socket is open to other users (forge may run under another uid)", async () => {
    await using shim = await startShim(`export default () => new Response("ok");`);
    const { mode } = await Bun.file(shim.socketPath).stat();
    expect(mode & 0o666).toBe(0o666);
  });

  test("a generic shim answers 503 until specialized, stays generic on a bad module, and is specialized once", async () => {
    await using shim = await startShim(undefined, { BASE: "cell" });
    const before = await shim.request("/");
    expect(before.status).toBe(503);
    expect(await shim.control(CONTROL_HEALTH).then((r) => r.json())).toMatchObject({ specialized: false, function: null });

    const specialize = (code: string, env: Record<string, string> = {}) =>
      shim.control(CONTROL_SPECIALIZE, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ function: "late", version: 3, code, env }),
      });

    const broken = await specialize(`export default {`, { LEAK: "no" });
    expect(broken.status).toBe(400);
    expect(((await broken.json()) as { error: { message: string } }).error.message).toContain("failed to load");
    const none = await specialize(`export const nothing = 1;`);
    expect(none.status).toBe(400);
    expect(((await none.json()) as { error: { message: string } }).error.message).toContain("exports nothing");
    expect(await shim.control(CONTROL_HEALTH).then((r) => r.json())).toMatchObject({ specialized: false });

    const good = await specialize(
      `export default { fetch: (request, env) => Response.json({ env: env.GREETING, process: process.env.GREETING, base: process.env.BASE, leak: process.env.LEAK ?? null }) };`,
      { GREETING: "late hello" },
    );
    expect(good.status).toBe(200);
    const result = (await good.json()) as { ok: boolean; loadMs: number };
    expect(result.ok).toBe(true);
    expect(result.loadMs).toBeGreaterThan(0);
    expect(await (await shim.request("/")).json()).toEqual({ env: "late hello", process: "late hello", base: "cell", leak: null });
    expect(await shim.control(CONTROL_HEALTH).then((r) => r.json())).toMatchObject({ specialized: true, function: "late", version: 3 });

    const again = await specialize(`export default () => new Response("other")`);
    expect(again.status).toBe(409);
    expect(await (await shim.request("/")).json()).toMatchObject({ env: "late hello" });
  });
});

describe("shim: logs", () => {
  test("lines written during a request carry its id; lines outside do not; every line of a message is tagged", async () => {
    await using shim = await startShim(`
      console.log("loading");
      export default async (request) => {
        const id = request.headers.get("x-forge-request-id");
        console.log("start", id);
        console.info({ nested: { value: 1 } });
        await new Promise((resolve) => setTimeout(resolve, Number(id.split("-")[1]) % 3));
        console.warn("line one\\nline two");
        console.error("%s has %d items", "cart", 3);
        console.debug("end", id);
        return new Response(id);
      };
    `);
    await shim.line((l) => l.text === "loading" && l.requestId === undefined);
    const n = 12;
    const ids = Array.from({ length: n }, (_, i) => `r-${i}`);
    await Promise.all(ids.map((id) => shim.request("/", { headers: { "x-forge-request-id": id } }).then((r) => r.text())));
    for (const id of ids) {
      // stdout and stderr are two pipes: order holds within each, not across them.
      await shim.line((l) => l.requestId === id && l.text === `end ${id}`);
      await shim.line((l) => l.requestId === id && l.text === "cart has 3 items");
      const mine = (stream: Line["stream"]) =>
        shim.lines.filter((l) => l.requestId === id && l.stream === stream).map((l) => l.text);
      // Each runtime's console prints objects its own way (Bun over lines, Node on one when short).
      const object = runtime === "bun" ? ["{", "  nested: {", "    value: 1,", "  },", "}"] : ["{ nested: { value: 1 } }"];
      expect(mine("stdout")).toEqual([`start ${id}`, ...object, `end ${id}`]);
      expect(mine("stderr")).toEqual(["line one", "line two", "cart has 3 items"]);
    }
    expect(shim.lines.filter((l) => l.text.startsWith("start ")).every((l) => l.text === `start ${l.requestId}`)).toBe(true);
  });
});

/** Starts the shim on a bundle that must fail to load: its exit code and stderr. */
async function startToExit(code: string, settings: Record<string, string> = {}) {
  const dir = await mkdtemp(join(tmpdir(), "forge-shim-"));
  try {
    const bundle = join(dir, "fn.mjs");
    await writeFile(bundle, code);
    const proc = Bun.spawn(await shimCommand(), {
      cwd: dir,
      env: {
        PATH: "/usr/bin:/bin",
        FORGE_SOCKET: join(dir, "s.sock"),
        FORGE_CONTROL_TOKEN: "t",
        FORGE_WORK_DIR: dir,
        FORGE_BUNDLE: bundle,
        FORGE_FUNCTION: "fn",
        ...settings,
      },
      stdout: "ignore",
      stderr: "pipe",
    });
    const [exitCode, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
    return { exitCode, stderr };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

type Shim = Awaited<ReturnType<typeof startShim>>;
const health = (shim: Shim) => shim.control(CONTROL_HEALTH).then((r) => r.json() as Promise<HealthInfo>);
const withId = (id: string, init: RequestInit = {}): RequestInit => ({
  ...init,
  headers: { "x-forge-request-id": id, ...(init.headers as Record<string, string>) },
});

describe("shim: which export is called", () => {
  test("a Lambda handler that keeps the current user in a module variable is kind lambda (forge gives it one event at a time)", async () => {
    await using shim = await startShim(`
      let currentUser;
      export const handler = async (event) => {
        currentUser = event.headers["x-user"];
        await new Promise((resolve) => setTimeout(resolve, 1));
        return { statusCode: 200, body: currentUser };
      };
    `);
    expect(await health(shim)).toMatchObject({ kind: "lambda", pending: 0 });
    expect(await (await shim.request("/", { headers: { "x-user": "ada" } })).text()).toBe("ada");
  });

  test("a Workers module is kind fetch", async () => {
    await using shim = await startShim(ECHO);
    expect(await health(shim)).toMatchObject({ kind: "fetch", pending: 0 });
  });

  test("a configured handler name picks that export, even beside a default fetch", async () => {
    await using shim = await startShim(
      `export const hello = async (event, context) => ({ statusCode: 200, body: "hello " + context.functionName });
       export const other = () => ({ statusCode: 200, body: "other" });
       export default { fetch: () => new Response("fetch") };`,
      {},
      { settings: { FORGE_HANDLER: "hello" } },
    );
    expect(await health(shim)).toMatchObject({ kind: "lambda" });
    expect(await (await shim.request("/")).text()).toBe("hello fn");
  });

  test("a configured handler that is not exported fails the start, naming the exports", async () => {
    const { exitCode, stderr } = await startToExit(`export const hello = () => {}; export const answer = 42;`, { FORGE_HANDLER: "missing" });
    expect(exitCode).toBe(1);
    expect(stderr).toContain(`the handler "missing" is not exported`);
    expect(stderr).toContain("the module exports answer, hello");
  });

  test("CommonJS: module.exports = app with module.exports.handler beside it (Express with serverless-http) is the handler", async () => {
    const dir = await mkdtemp(join(tmpdir(), "forge-cjs-"));
    try {
      const entry = join(dir, "index.js");
      await writeFile(
        entry,
        `function app(req, res) { res.end("express"); }
         app.listen = () => {};
         module.exports = app;
         module.exports.handler = async (event, context) => ({ statusCode: 200, body: "cjs handler " + event.rawPath });`,
      );
      const built = await Bun.build({ entrypoints: [entry], target: runtime, format: "esm" });
      expect(built.success).toBe(true);
      const code = await built.outputs[0]?.text();
      // Bun bundles a CommonJS entry as \`export default module.exports\`.
      expect(code).toContain("export default");
      await using shim = await startShim(code);
      expect(await health(shim)).toMatchObject({ kind: "lambda" });
      expect(await (await shim.request("/from-cjs")).text()).toBe("cjs handler /from-cjs");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a module exporting nothing usable fails the start, listing what it exports", async () => {
    const { exitCode, stderr } = await startToExit(`export const answer = 42; export default { name: "x" };`);
    expect(exitCode).toBe(1);
    expect(stderr).toContain("the module exports answer, default (object: name)");
  });

  test("a module that throws while loading exits 1 with the stack on stderr", async () => {
    const { exitCode, stderr } = await startToExit(
      `function connect() { throw new Error("no database"); }\nconnect();\nexport default () => new Response("never");`,
    );
    expect(exitCode).toBe(1);
    expect(stderr).toContain("the module failed to load: no database");
    expect(stderr).toMatch(/at connect \(.*fn\.mjs:1:\d+\)/);
  });

  test("a syntax error exits 1 with where it is", async () => {
    const { exitCode, stderr } = await startToExit(`export default {\n  fetch() {\n`);
    expect(exitCode).toBe(1);
    expect(stderr).toMatch(/at .*fn\.mjs:\d+:\d+/);
  });
});

describe("shim: Lambda semantics", () => {
  const CONTEXT = `
    export const handler = async (event, context) => ({
      statusCode: 200,
      body: JSON.stringify({
        awsRequestId: context.awsRequestId,
        functionName: context.functionName,
        functionVersion: context.functionVersion,
        memoryLimitInMB: context.memoryLimitInMB,
        invokedFunctionArn: context.invokedFunctionArn,
        logGroupName: context.logGroupName,
        logStreamName: context.logStreamName,
        callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
        remaining: context.getRemainingTimeInMillis(),
      }),
    });
  `;

  test("the context: awsRequestId is forge's request id, remaining time counts down from the timeout", async () => {
    await using shim = await startShim(CONTEXT, {}, {
      settings: { FORGE_TIMEOUT_MS: "5000", FORGE_MEMORY_MB: "256", FORGE_REGION: "eu-west-1" },
    });
    const context = (await (await shim.request("/", withId("lambda-req-1"))).json()) as Record<string, unknown>;
    expect(context).toMatchObject({
      awsRequestId: "lambda-req-1",
      functionName: "fn",
      functionVersion: "7",
      memoryLimitInMB: "256",
      invokedFunctionArn: "arn:aws:lambda:eu-west-1:000000000000:function:fn",
      logGroupName: "/aws/lambda/fn",
      callbackWaitsForEmptyEventLoop: true,
    });
    expect(context.logStreamName).toMatch(/^\d{4}\/\d{2}\/\d{2}\/\[7\]test$/);
    expect(context.remaining).toBeGreaterThan(4000);
    expect(context.remaining).toBeLessThanOrEqual(5000);
    // Without an id from forge, a fresh UUID.
    const fresh = (await (await shim.request("/")).json()) as { awsRequestId: string };
    expect(fresh.awsRequestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  test("AWS_* variables, LAMBDA_TASK_ROOT and the working directory are set before the module loads", async () => {
    await using shim = await startShim(
      `import { readFileSync } from "node:fs";
       const atLoad = { ...process.env, cwd: process.cwd(), data: readFileSync("./data.txt", "utf8"), hour: new Date(0).getHours() };
       export const handler = async () => ({ statusCode: 200, body: JSON.stringify(atLoad) });`,
      { OWN: "mine" },
      {
        files: { "data.txt": "shipped with the function" },
        settings: { FORGE_MEMORY_MB: "512", FORGE_REGION: "ap-south-1", FORGE_TIMEOUT_MS: "3000" },
      },
    );
    const env = (await (await shim.request("/")).json()) as Record<string, unknown>;
    const dir = await realpath(shim.functionDir as string);
    expect(env).toMatchObject({
      AWS_LAMBDA_FUNCTION_NAME: "fn",
      AWS_LAMBDA_FUNCTION_VERSION: "7",
      AWS_LAMBDA_FUNCTION_MEMORY_SIZE: "512",
      AWS_LAMBDA_LOG_GROUP_NAME: "/aws/lambda/fn",
      AWS_REGION: "ap-south-1",
      AWS_DEFAULT_REGION: "ap-south-1",
      LAMBDA_TASK_ROOT: shim.functionDir,
      OWN: "mine",
      TZ: "UTC",
      hour: 0,
      data: "shipped with the function",
    });
    expect(await realpath(env.cwd as string)).toBe(dir);
    expect(env.AWS_EXECUTION_ENV).toMatch(/^AWS_Lambda_nodejs\d+\.x$/);
    expect(env.AWS_LAMBDA_LOG_STREAM_NAME).toMatch(/\[7\]test$/);
    expect(typeof env.LAMBDA_RUNTIME_DIR).toBe("string");
    expect(env).not.toHaveProperty("AWS_LAMBDA_RUNTIME_API");
    for (const name of Object.keys(env)) expect(name.startsWith("FORGE_")).toBe(false);
  });

  test("context.succeed, context.done and the callback finish the invocation; the first one wins", async () => {
    await using shim = await startShim(`
      export const handler = function (event, context, callback) {
        const path = event.rawPath;
        if (path === "/succeed") setTimeout(() => context.succeed({ statusCode: 200, body: "succeeded" }), 1);
        else if (path === "/done") context.done(null, { statusCode: 201, body: "done" });
        else if (path === "/fail") context.fail(new RangeError("failed"));
        else if (path === "/first") { callback(null, { statusCode: 200, body: "first" }); callback(null, { statusCode: 200, body: "second" }); }
      };
    `);
    expect(await (await shim.request("/succeed")).text()).toBe("succeeded");
    const done = await shim.request("/done");
    expect(done.status).toBe(201);
    expect(await done.text()).toBe("done");
    const failed = await shim.request("/fail");
    expect(failed.status).toBe(500);
    expect(((await failed.json()) as { error: { message: string } }).error.message).toBe("failed");
    expect(await (await shim.request("/first")).text()).toBe("first");
  });

  test("a handler that never finishes ends at the function's timeout with Lambda's message", async () => {
    await using shim = await startShim(`export const handler = () => new Promise(() => {});`, {}, { settings: { FORGE_TIMEOUT_MS: "50" } });
    const response = await shim.request("/", withId("slow-lambda"));
    expect(response.status).toBe(500);
    expect(await response.json()).toMatchObject({ error: { message: "Task timed out after 0.05 seconds" } });
  });

  test("headers pass as Bun's parser joined them; a value with commas is never rewritten", async () => {
    await using shim = await startShim(`export const handler = async (event) => ({ statusCode: 200, body: JSON.stringify(event.headers) });`);
    const headers = new Headers({ "user-agent": "Mozilla/5.0 (KHTML, like Gecko)", "if-modified-since": "Wed, 21 Oct 2015 07:28:00 GMT" });
    headers.append("x-multi", "a");
    headers.append("x-multi", "b");
    const seen = (await (await shim.request("/", { headers })).json()) as Record<string, string>;
    expect(seen["user-agent"]).toBe("Mozilla/5.0 (KHTML, like Gecko)");
    expect(seen["if-modified-since"]).toBe("Wed, 21 Oct 2015 07:28:00 GMT");
    // Repeated headers reach Bun.serve's Request already joined; API Gateway would give "a,b".
    expect(seen["x-multi"]?.split(/,\s*/)).toEqual(["a", "b"]);
  });
});

describe("shim: invoke route", () => {
  test("a Lambda handler gets the JSON payload as its event and answers its result as JSON", async () => {
    await using shim = await startShim(`
      export const handler = async (event, context) => {
        if (event.fail) { const err = new TypeError("bad order " + event.id); throw err; }
        if (event.nothing) return undefined;
        return { got: event, id: context.awsRequestId };
      };
    `);
    const invoke = (body: string, id = "inv-1") =>
      shim.control(`${CONTROL_INVOKE}/orders`, { method: "POST", headers: { "x-forge-request-id": id }, body });
    const ok = await invoke(JSON.stringify({ id: 42, items: ["a"] }));
    expect(ok.status).toBe(200);
    expect(ok.headers.get("content-type")).toContain("application/json");
    expect(await ok.json()).toEqual({ got: { id: 42, items: ["a"] }, id: "inv-1" });
    expect(await (await invoke("")).json()).toEqual({ got: {}, id: "inv-1" });
    expect(await (await invoke(JSON.stringify({ nothing: true }))).json()).toBeNull();

    const invalid = await invoke("{not json");
    expect(invalid.status).toBe(400);
    expect(((await invalid.json()) as { error: { code: string } }).error.code).toBe("invalid_payload");

    const failed = await invoke(JSON.stringify({ fail: true, id: 7 }), "inv-fail");
    expect(failed.status).toBe(500);
    expect(await failed.json()).toEqual({ error: { code: "function_error", message: "bad order 7", type: "TypeError" } });
    await shim.line((l) => l.requestId === "inv-fail" && l.text.trimStart().startsWith("at "));
  });

  test("a fetch handler gets POST <path> with the body and headers, without forge's control header", async () => {
    await using shim = await startShim(ECHO);
    const response = await shim.control(`${CONTROL_INVOKE}/jobs/run?x=1`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-extra": "yes" },
      body: '{"a":1}',
    });
    const echo = (await response.json()) as { method: string; path: string; query: string; body: string; headers: Record<string, string> };
    expect(echo).toMatchObject({ method: "POST", path: "/jobs/run", query: "?x=1" });
    expect(Buffer.from(echo.body, "base64").toString()).toBe('{"a":1}');
    expect(echo.headers).toMatchObject({ "content-type": "application/json", "x-extra": "yes" });
    expect(echo.headers).not.toHaveProperty(CONTROL_HEADER);
    const root = (await (await shim.control(CONTROL_INVOKE, { method: "POST" })).json()) as { path: string };
    expect(root.path).toBe("/");
  });

  test("without the control token the invoke path is the function's", async () => {
    await using shim = await startShim(`export const handler = async (event) => ({ statusCode: 200, body: "http " + event.rawPath });`);
    expect(await (await shim.request(`${CONTROL_INVOKE}/x`, { method: "POST", body: "{}" })).text()).toBe(`http ${CONTROL_INVOKE}/x`);
  });
});

describe("shim: scheduled route", () => {
  const TICK = "2026-03-01T06:30:00.000Z";
  const tick = (shim: Shim, body?: string, id = "cron-1") =>
    shim.control(`${CONTROL_SCHEDULED}/tasks`, {
      method: "POST",
      headers: { "x-forge-schedule-cron": "30 6 * * *", "x-forge-schedule-tick": TICK, "x-forge-request-id": id },
      body,
    });

  test("a Workers scheduled(controller, env, ctx) gets the cron and tick; the answer waits for its waitUntil work", async () => {
    await using shim = await startShim(
      `export default {
        fetch: () => new Response("fetch"),
        async scheduled(controller, env, ctx) {
          if (controller.cron === "fail") throw new Error("cron failed");
          ctx.waitUntil(new Promise((resolve) => setTimeout(resolve, 5)).then(() => console.log("late work done")));
          console.log(JSON.stringify({ cron: controller.cron, scheduledTime: controller.scheduledTime, type: controller.type, noRetry: typeof controller.noRetry, greeting: env.GREETING }));
        },
      };`,
      { GREETING: "hi" },
    );
    const response = await tick(shim);
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ ok: true });
    // The waitUntil work finished before the answer came.
    expect(shim.lines.some((l) => l.requestId === "cron-1" && l.text === "late work done")).toBe(true);
    const seen = await shim.line((l) => l.requestId === "cron-1" && l.text.startsWith("{"));
    expect(JSON.parse(seen.text)).toEqual({ cron: "30 6 * * *", scheduledTime: Date.parse(TICK), type: "scheduled", noRetry: "function", greeting: "hi" });

    const failed = await shim.control(CONTROL_SCHEDULED, { method: "POST", headers: { "x-forge-schedule-cron": "fail" } });
    expect(failed.status).toBe(500);
    expect(await failed.json()).toMatchObject({ error: { code: "function_error", message: "cron failed" } });
  });

  test("a Lambda handler gets an EventBridge Scheduled Event, or the payload when there is one", async () => {
    await using shim = await startShim(`export const handler = async (event) => event;`, {}, { settings: { FORGE_REGION: "eu-central-1" } });
    const event = (await (await tick(shim)).json()) as Record<string, unknown>;
    expect(event).toMatchObject({
      version: "0",
      "detail-type": "Scheduled Event",
      source: "aws.events",
      account: "000000000000",
      time: "2026-03-01T06:30:00Z",
      region: "eu-central-1",
      resources: [],
      detail: {},
    });
    expect(event.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(await (await tick(shim, JSON.stringify({ report: "daily" }))).json()).toEqual({ report: "daily" });
  });

  test("a fetch handler without scheduled gets POST <path> with the schedule headers", async () => {
    await using shim = await startShim(ECHO);
    const echo = (await (await tick(shim, "payload")).json()) as { method: string; path: string; body: string; headers: Record<string, string> };
    expect(echo).toMatchObject({ method: "POST", path: "/tasks" });
    expect(Buffer.from(echo.body, "base64").toString()).toBe("payload");
    expect(echo.headers).toMatchObject({ "x-forge-schedule-cron": "30 6 * * *", "x-forge-schedule-tick": TICK });
  });
});

describe("shim: Workers semantics", () => {
  test("env holds only the function's own variables, frozen", async () => {
    await using shim = await startShim(
      `export default { fetch: (request, env) => Response.json({ env, frozen: Object.isFrozen(env), path: typeof process.env.PATH }) };`,
      { GREETING: "hi", API_KEY: "k", HOME: "/home/x", TMPDIR: "/tmp" },
      { settings: { FORGE_ENV_NAMES: "GREETING,API_KEY" } },
    );
    expect(await (await shim.request("/")).json()).toEqual({ env: { GREETING: "hi", API_KEY: "k" }, frozen: true, path: "string" });
  });

  test("waitUntil work shows in health as pending; drain answers once it settled, or at its bound", async () => {
    await using shim = await startShim(`
      let release;
      export default {
        fetch(request, env, ctx) {
          const path = new URL(request.url).pathname;
          if (path === "/release") { release(); return new Response("released"); }
          if (path === "/fail") { ctx.waitUntil(Promise.reject(new Error("background failed"))); return new Response("ok"); }
          ctx.waitUntil(new Promise((resolve) => (release = resolve)));
          return new Response("answered before the work");
        },
      };
    `);
    expect(await (await shim.request("/work")).text()).toBe("answered before the work");
    expect(await health(shim)).toMatchObject({ pending: 1 });
    // Bounded: the work is still pending after 20 ms.
    const bounded = await shim.control(CONTROL_DRAIN, { method: "POST", headers: { "x-forge-drain-ms": "20" } });
    expect(await bounded.json()).toEqual({ pending: 1, websockets: 0 });
    const drain = shim.control(CONTROL_DRAIN, { method: "POST" });
    expect(await (await shim.request("/release")).text()).toBe("released");
    expect(await (await drain).json()).toEqual({ pending: 0, websockets: 0 });
    expect(await health(shim)).toMatchObject({ pending: 0 });

    expect(await (await shim.request("/fail", withId("bg-1"))).text()).toBe("ok");
    await shim.line((l) => l.requestId === "bg-1" && l.text.includes("waitUntil task failed") && l.text.includes("background failed"));
  });
});

describe("shim: a request's failure stays its own", () => {
  test("a throwing timer fails only its request; a concurrent one succeeds and the instance lives", async () => {
    await using shim = await startShim(`
      let release;
      const released = new Promise((resolve) => (release = resolve));
      export default {
        async fetch(request) {
          const path = new URL(request.url).pathname;
          if (path === "/slow") { await released; return new Response("slow done"); }
          if (path === "/boom") {
            setTimeout(() => { release(); throw new Error("timer exploded"); }, 1);
            return new Promise(() => {}); // never answers by itself
          }
          if (path === "/late") {
            setTimeout(() => { throw new Error("after the answer"); }, 1);
            return new Response("answered");
          }
          return new Response("fine");
        },
      };
    `);
    const slow = shim.request("/slow", withId("slow-1"));
    const boom = await shim.request("/boom", withId("boom-1"));
    expect(boom.status).toBe(500);
    expect(await boom.json()).toMatchObject({ error: { code: "function_error", message: "timer exploded" } });
    expect(await (await slow).text()).toBe("slow done");
    await shim.line((l) => l.requestId === "boom-1" && l.stream === "stderr" && l.text.includes("timer exploded"));

    expect(await (await shim.request("/late", withId("late-1"))).text()).toBe("answered");
    await shim.line((l) => l.requestId === "late-1" && l.text.includes("after the answer"));
    expect(await (await shim.request("/")).text()).toBe("fine");
    expect(shim.proc.exitCode).toBeNull();
  });

  test("a floating rejection in a Lambda handler fails that invocation; the instance lives", async () => {
    await using shim = await startShim(`
      export const handler = async (event) => {
        if (event.rawPath === "/float") {
          (async () => { await null; throw new Error("nobody awaited me"); })();
          return new Promise(() => {});
        }
        return { statusCode: 200, body: "fine" };
      };
    `);
    const floating = await shim.request("/float", withId("float-1"));
    expect(floating.status).toBe(500);
    expect(await floating.json()).toMatchObject({ error: { code: "function_error", message: "nobody awaited me" } });
    await shim.line((l) => l.requestId === "float-1" && l.text.includes("unhandled rejection"));
    expect(await (await shim.request("/")).text()).toBe("fine");
  });

  test("a body stream failing before its first chunk is a JSON 500; after it, the connection is cut; both logged", async () => {
    await using shim = await startShim(`
      let release;
      const released = new Promise((resolve) => (release = resolve));
      export default (request) => {
        const path = new URL(request.url).pathname;
        if (path === "/early") return new Response(new ReadableStream({ pull() { throw new Error("no data at all"); } }));
        if (path === "/release") { release(); return new Response("released"); }
        if (path === "/late") {
          let sent = false;
          return new Response(new ReadableStream({
            async pull(controller) {
              if (!sent) { sent = true; controller.enqueue(new TextEncoder().encode("partial")); return; }
              await released;
              throw new Error("died midway");
            },
          }));
        }
        return new Response("plain", { headers: { "x-kept": "1" } });
      };
    `);
    const early = await shim.request("/early", withId("early-1"));
    expect(early.status).toBe(500);
    expect(await early.json()).toMatchObject({ error: { code: "function_error", message: "no data at all" } });
    await shim.line((l) => l.requestId === "early-1" && l.text.includes("before its first chunk"));

    const late = await shim.request("/late", withId("late-1"));
    expect(late.status).toBe(200);
    const reader = late.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe("partial");
    expect(await (await shim.request("/release")).text()).toBe("released");
    await expect(reader.read()).rejects.toThrow();
    await shim.line((l) => l.requestId === "late-1" && l.text.includes("died midway"));

    // A plain string body is untouched: its content type is Bun's text/plain.
    const plain = await shim.request("/");
    expect(plain.headers.get("content-type")).toContain("text/plain");
    expect(plain.headers.get("x-kept")).toBe("1");
    expect(await plain.text()).toBe("plain");
  });

  test("fetch() answers and subclasses stay instanceof Response", async () => {
    await using shim = await startShim(`
      class Mine extends Response {}
      export default async () => {
        const native = await fetch("data:text/plain,hi");
        return Response.json({ native: native instanceof Response, mine: new Mine("x") instanceof Mine, plainIsMine: new Response("x") instanceof Mine });
      };
    `);
    expect(await (await shim.request("/")).json()).toEqual({ native: true, mine: true, plainIsMine: false });
  });
});

describe("shim: Lambda response streaming", () => {
  test("streamifyResponse with HttpResponseStream.from streams the head and first bytes before the handler finishes", async () => {
    await using shim = await startShim(`
      import { pipeline } from "node:stream/promises";
      import { Readable } from "node:stream";
      let release;
      const released = new Promise((resolve) => (release = resolve));
      export const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
        if (event.rawPath === "/release") {
          release();
          responseStream.end("released");
          return;
        }
        if (event.rawPath === "/pipe") {
          await pipeline(Readable.from(["piped ", "through ", "node"]), responseStream);
          return;
        }
        responseStream = awslambda.HttpResponseStream.from(responseStream, {
          statusCode: 201,
          headers: { "content-type": "text/plain", "x-request": context.awsRequestId },
          cookies: ["a=1"],
        });
        responseStream.write("first;");
        await released;
        responseStream.write("second;");
        responseStream.end();
      });
    `);
    expect(await health(shim)).toMatchObject({ kind: "lambda" });
    const response = await shim.request("/stream", withId("stream-1"));
    expect(response.status).toBe(201);
    expect(response.headers.get("content-type")).toBe("text/plain");
    expect(response.headers.get("x-request")).toBe("stream-1");
    expect(response.headers.getSetCookie()).toEqual(["a=1"]);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    expect(decoder.decode((await reader.read()).value)).toBe("first;");
    // The handler is still waiting: release it from another request.
    expect(await (await shim.request("/release")).text()).toBe("released");
    let rest = "";
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += decoder.decode(r.value, { stream: true });
    expect(rest).toBe("second;");

    const piped = await shim.request("/pipe");
    expect(piped.headers.get("content-type")).toBe("application/octet-stream");
    expect(await piped.text()).toBe("piped through node");
  });

  test("a streaming handler that throws before writing is a JSON 500", async () => {
    await using shim = await startShim(`
      export const handler = awslambda.streamifyResponse(async (event, responseStream) => {
        throw new Error("stream setup failed");
      });
    `);
    const response = await shim.request("/");
    expect(response.status).toBe(500);
    expect(await response.json()).toMatchObject({ error: { code: "function_error", message: "stream setup failed" } });
  });
});

describe("shim: specialize with a function folder", () => {
  test("dir, bundle, handler and timeout from the body; the answer says the kind", async () => {
    await using shim = await startShim(undefined, { BASE: "cell" });
    const dir = join(shim.dir, "version-3");
    await mkdir(dir);
    await writeFile(join(dir, "config.json"), '{"from":"the folder"}');
    await writeFile(
      join(dir, BUNDLE_FILE),
      `import config from "./config.json" with { type: "json" };
       export const greet = async (event, context) => ({ statusCode: 200, body: JSON.stringify({
         config, cwd: process.cwd(), root: process.env.LAMBDA_TASK_ROOT, remaining: context.getRemainingTimeInMillis(),
         memory: context.memoryLimitInMB, region: process.env.AWS_REGION, own: process.env.OWN,
       }) });`,
    );
    const response = await shim.control(CONTROL_SPECIALIZE, {
      method: "POST",
      body: JSON.stringify({
        function: "late",
        version: 3,
        env: { OWN: "yes" },
        dir,
        bundle: join(dir, BUNDLE_FILE),
        handler: "greet",
        timeoutMs: 2000,
        memoryMb: 64,
        region: "us-west-2",
      }),
    });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ ok: true, kind: "lambda" });
    const seen = (await (await shim.request("/")).json()) as Record<string, unknown>;
    expect(seen).toMatchObject({ config: { from: "the folder" }, root: dir, memory: "64", region: "us-west-2", own: "yes" });
    expect(await realpath(seen.cwd as string)).toBe(await realpath(dir));
    expect(seen.remaining).toBeGreaterThan(1000);
    expect(seen.remaining).toBeLessThanOrEqual(2000);
    expect(await health(shim)).toMatchObject({ specialized: true, kind: "lambda", function: "late", version: 3 });
  });

  test("a module that throws while loading is a 400 with the stack, and the cell stays generic", async () => {
    await using shim = await startShim();
    const response = await shim.control(CONTROL_SPECIALIZE, {
      method: "POST",
      body: JSON.stringify({ function: "bad", version: 1, env: {}, code: `function init() { throw new Error("init failed"); }\ninit();` }),
    });
    expect(response.status).toBe(400);
    const { error } = (await response.json()) as { error: { code: string; message: string; stack: string } };
    expect(error.code).toBe("specialize_failed");
    expect(error.message).toContain("init failed");
    expect(error.stack).toMatch(/^at init \(/);
    expect(await health(shim)).toMatchObject({ specialized: false, kind: null });
  });
});

/** Bundles `source` (which may import hono) as forge's CLI would: one ESM file for the shim. */
async function bundled(source: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "forge-bundle-"));
  try {
    const entry = join(dir, "index.ts");
    await writeFile(entry, source);
    const built = await Bun.build({ entrypoints: [entry], target: runtime, format: "esm" });
    if (!built.success) throw new AggregateError(built.logs, "the test module failed to bundle");
    return (await built.outputs[0]?.text()) ?? "";
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const HONO = JSON.stringify(Bun.resolveSync("hono", import.meta.dir));
const HONO_BUN = JSON.stringify(Bun.resolveSync("hono/bun", import.meta.dir));
const ROUND_TRIPS = 300;

/** `count` round trips, text and binary in turn; each reply must be the message itself. */
async function echoes(ws: TestWebSocket, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    if (i % 3 === 2) {
      const bytes = new Uint8Array([i & 0xff, 0, 255, (i >> 8) & 0xff]);
      expect(new Uint8Array((await ws.roundTrip(bytes)) as ArrayBuffer)).toEqual(bytes);
    } else {
      expect(await ws.roundTrip(`message ${i} ${"x".repeat(i)}`)).toBe(`message ${i} ${"x".repeat(i)}`);
    }
  }
}

const BUN_STYLE_WS = `
  let release;
  export default {
    fetch(request, server) {
      const url = new URL(request.url);
      if (url.pathname === "/ws") {
        if (server.upgrade(request, { data: { user: url.searchParams.get("user") } })) return;
        return new Response("upgrade failed", { status: 400 });
      }
      if (url.pathname === "/release") { release?.(); return new Response("released"); }
      return Response.json({ keys: Object.keys(server), spread: { ...server }, json: JSON.stringify(server), upgrade: typeof server.upgrade, frozen: Object.isFrozen(server) });
    },
    websocket: {
      open(ws) { ws.send("hello " + ws.data.user); },
      async message(ws, message) {
        if (message === "throw") throw new Error("the handler broke");
        if (message === "slow") { console.log("slow started"); await new Promise((resolve) => (release = resolve)); ws.send("slow done"); return; }
        if (message === "hang") { console.log("hang started"); return new Promise(() => {}); }
        ws.send(message);
      },
      close(ws, code, reason) { console.log("closed " + code + " " + reason + " " + ws.data.user); },
    },
  };
`;

// The node runtime does not serve WebSockets yet (runtimes/node/serve.ts answers 501).
if (which === "bun") describe("shim: WebSockets", () => {
  test("Bun style: server.upgrade with data, open/message/close, a few hundred echoes over the instance's socket; env stays the settings", async () => {
    await using shim = await startShim(BUN_STYLE_WS, { GREETING: "hi" }, { settings: { FORGE_ENV_NAMES: "GREETING" } });
    expect(await (await shim.request("/")).json()).toEqual({
      keys: ["GREETING"],
      spread: { GREETING: "hi" },
      json: JSON.stringify({ GREETING: "hi" }),
      upgrade: "function",
      frozen: true,
    });

    await using ws = await TestWebSocket.open("ws://fn.localhost/ws?user=ada", { unix: shim.socketPath, headers: { "x-forge-request-id": "ws-1" } });
    expect(await ws.next()).toBe("hello ada");
    expect(await health(shim)).toMatchObject({ websockets: 1 });
    await echoes(ws, ROUND_TRIPS);

    // A failing handler is logged under the upgrade request's id; the socket stays open (as in Bun).
    ws.send("throw");
    await shim.line((l) => l.requestId === "ws-1" && l.text.includes("websocket message handler failed") && l.text.includes("the handler broke"));
    expect(await ws.roundTrip("still here")).toBe("still here");

    expect(await ws.close(1000, "bye")).toMatchObject({ code: 1000 });
    await shim.line((l) => l.requestId === "ws-1" && l.text === "closed 1000 bye ada");
    expect(await health(shim)).toMatchObject({ websockets: 0, pending: 0 });
  });

  test("Hono style: upgradeWebSocket and websocket from hono/bun work unchanged; getConnInfo gives the client address", async () => {
    const code = await bundled(`
      import { Hono } from ${HONO};
      import { getConnInfo, upgradeWebSocket, websocket } from ${HONO_BUN};
      const app = new Hono();
      app.get("/ws", upgradeWebSocket((c) => ({
        onOpen(event, ws) { ws.send("welcome " + c.req.query("name")); },
        onMessage(event, ws) { ws.send(event.data); },
        onClose(event) { console.log("hono closed " + event.code); },
      })));
      app.get("/ip", (c) => c.json(getConnInfo(c).remote));
      app.get("/env", (c) => c.json(c.env));
      export default { fetch: app.fetch, websocket };
    `);
    await using shim = await startShim(code, { GREETING: "hey" }, { settings: { FORGE_ENV_NAMES: "GREETING" } });
    expect(await (await shim.request("/env")).json()).toEqual({ GREETING: "hey" });
    expect(await (await shim.request("/ip", { headers: { "x-forge-client-ip": "203.0.113.7" } })).json()).toEqual({
      address: "203.0.113.7",
      addressType: "IPv4",
      port: 0,
    });

    await using ws = await TestWebSocket.open("ws://fn.localhost/ws?name=grace", { unix: shim.socketPath, headers: { "x-forge-request-id": "hono-1" } });
    expect(await ws.next()).toBe("welcome grace");
    await echoes(ws, ROUND_TRIPS);
    expect(await ws.close(1000)).toMatchObject({ code: 1000 });
    await shim.line((l) => l.requestId === "hono-1" && l.text === "hono closed 1000");
  });

  test("a drain closes open WebSockets with 1001: idle ones at once, one whose handler runs once it settled", async () => {
    await using shim = await startShim(BUN_STYLE_WS);
    await using idle = await TestWebSocket.open("ws://fn.localhost/ws?user=idle", { unix: shim.socketPath });
    await using busy = await TestWebSocket.open("ws://fn.localhost/ws?user=busy", { unix: shim.socketPath });
    expect(await idle.next()).toBe("hello idle");
    expect(await busy.next()).toBe("hello busy");
    busy.send("slow");
    await shim.line((l) => l.text === "slow started");
    expect(await health(shim)).toMatchObject({ pending: 1, websockets: 2 });

    const drain = shim.control(CONTROL_DRAIN, { method: "POST", headers: { "x-forge-drain-ms": "30000" } });
    expect(await idle.closed).toMatchObject({ code: 1001, reason: "going away", wasClean: true });
    // The busy socket is still open: its handler has not finished.
    expect(busy.socket.readyState).toBe(WebSocket.OPEN);
    expect(await (await shim.request("/release")).text()).toBe("released");
    expect(await busy.next()).toBe("slow done");
    expect(await busy.closed).toMatchObject({ code: 1001, reason: "going away" });
    expect(await (await drain).json()).toEqual({ pending: 0, websockets: 0 });
    await shim.line((l) => l.text === "closed 1001 going away idle");
    await shim.line((l) => l.text === "closed 1001 going away busy");

    // A socket opened after the drain began is closed at once.
    await using late = await TestWebSocket.open("ws://fn.localhost/ws?user=late", { unix: shim.socketPath });
    expect(await late.closed).toMatchObject({ code: 1001 });
  });

  test("a drain closes a socket whose handler never settles at the end of its bound", async () => {
    await using shim = await startShim(BUN_STYLE_WS);
    await using ws = await TestWebSocket.open("ws://fn.localhost/ws?user=stuck", { unix: shim.socketPath });
    expect(await ws.next()).toBe("hello stuck");
    ws.send("hang");
    await shim.line((l) => l.text === "hang started");
    const drain = await shim.control(CONTROL_DRAIN, { method: "POST", headers: { "x-forge-drain-ms": "50" } });
    expect(await ws.closed).toMatchObject({ code: 1001 });
    // The hung handler is still pending work; the socket is gone.
    expect(await drain.json()).toEqual({ pending: 1, websockets: 0 });
  });

  test("an upgrade on a module without websocket handlers is a 500 that says what to export; the instance serves on", async () => {
    await using shim = await startShim(`
      export default {
        fetch(request, server) {
          if (request.headers.get("upgrade") === "websocket" && server.upgrade(request)) return;
          return new Response("plain");
        },
      };
    `);
    const refused = await shim.request("/ws", { headers: upgradeRequestHeaders() });
    expect(refused.status).toBe(500);
    const { error } = (await refused.json()) as { error: { code: string; message: string } };
    expect(error.code).toBe("function_error");
    expect(error.message).toContain("exports no websocket handlers");
    expect(await (await shim.request("/")).text()).toBe("plain");
  });

  test("the websocket export's options apply, also on a stem cell specialized after it started (maxPayloadLength)", async () => {
    await using shim = await startShim();
    const specialized = await shim.control(CONTROL_SPECIALIZE, {
      method: "POST",
      body: JSON.stringify({
        function: "small",
        version: 1,
        env: {},
        code: `export default {
          fetch: (request, server) => (server.upgrade(request) ? undefined : new Response("no")),
          websocket: { maxPayloadLength: 1024, message(ws, message) { ws.send(message); } },
        };`,
      }),
    });
    expect(specialized.status).toBe(200);
    await using ws = await TestWebSocket.open("ws://fn.localhost/ws", { unix: shim.socketPath });
    expect(await ws.roundTrip("small enough")).toBe("small enough");
    ws.send("x".repeat(2048));
    expect(await ws.closed).toMatchObject({ code: 1009 });
  });

  test("Workers: WebSocketPair with accept, events, send and close; a 101 to a request that is no upgrade is a 500", async () => {
    await using shim = await startShim(`
      export default {
        fetch(request) {
          const [client, server] = Object.values(new WebSocketPair());
          server.send("queued before open");
          server.accept();
          server.addEventListener("message", (event) => {
            if (event.data === "close me") server.close(4000, "asked");
            else server.send(typeof event.data === "string" ? event.data : "binary " + (event.data instanceof ArrayBuffer) + " " + event.data.byteLength);
          });
          server.addEventListener("close", (event) => console.log("pair closed " + event.code));
          return new Response(null, { status: 101, webSocket: client, headers: { "sec-websocket-protocol": "echo" } });
        },
      };
    `);
    await using ws = await TestWebSocket.open("ws://fn.localhost/ws", { unix: shim.socketPath, protocols: ["echo"] });
    expect(ws.protocol).toBe("echo");
    expect(await ws.next()).toBe("queued before open");
    for (let i = 0; i < ROUND_TRIPS; i++) expect(await ws.roundTrip(`pair ${i}`)).toBe(`pair ${i}`);
    expect(await ws.roundTrip(new Uint8Array(5))).toBe("binary true 5");
    ws.send("close me");
    expect(await ws.closed).toMatchObject({ code: 4000, reason: "asked" });
    await shim.line((l) => l.text === "pair closed 4000");

    const plain = await shim.request("/not-an-upgrade");
    expect(plain.status).toBe(500);
    expect(((await plain.json()) as { error: { message: string } }).error.message).toContain("not a WebSocket upgrade");
  });

  test("Hono's Workers adapter (hono/cloudflare-workers upgradeWebSocket) runs on WebSocketPair unchanged", async () => {
    const code = await bundled(`
      import { Hono } from ${HONO};
      import { upgradeWebSocket } from ${JSON.stringify(Bun.resolveSync("hono/cloudflare-workers", import.meta.dir))};
      const app = new Hono();
      app.get("/ws", upgradeWebSocket(() => ({ onMessage(event, ws) { ws.send("cf " + event.data); } })));
      export default app;
    `);
    await using shim = await startShim(code);
    await using ws = await TestWebSocket.open("ws://fn.localhost/ws", { unix: shim.socketPath });
    for (let i = 0; i < 50; i++) expect(await ws.roundTrip(`m${i}`)).toBe(`cf m${i}`);
  });
});

if (which === "bun") describe("shim: the WebSocket fixtures (test/fixtures/ws-*) the end-to-end tests deploy", () => {
  for (const fixture of ["ws-bun", "ws-hono"]) {
    test(`${fixture} echoes text and binary and answers its client address`, async () => {
      const built = await Bun.build({ entrypoints: [join(import.meta.dir, "../../test/fixtures", fixture, "index.ts")], target: "bun", format: "esm" });
      expect(built.success).toBe(true);
      await using shim = await startShim(await built.outputs[0]?.text());
      const ip = await shim.request("/ip", { headers: { "x-forge-client-ip": "::1" } });
      expect(await ip.json()).toMatchObject({ address: "::1", port: 0 });
      await using ws = await TestWebSocket.open("ws://fn.localhost/ws", { unix: shim.socketPath });
      await echoes(ws, 30);
      expect(await ws.close(1000, "done")).toMatchObject({ code: 1000 });
      await shim.line((l) => l.text.includes("closed: 1000 done"));
    });
  }
});

describe("shim: the client's address", () => {
  test("server.requestIP answers x-forge-client-ip (IPv4, IPv6; null without it); the header stays visible", async () => {
    await using shim = await startShim(`
      export default {
        fetch: (request, server) => Response.json({ ip: server.requestIP(request), header: request.headers.get("x-forge-client-ip") }),
      };
    `);
    const ask = async (ip?: string) => (await shim.request("/", ip === undefined ? {} : { headers: { "x-forge-client-ip": ip } })).json();
    expect(await ask("198.51.100.4")).toEqual({ ip: { address: "198.51.100.4", family: "IPv4", port: 0 }, header: "198.51.100.4" });
    expect(await ask("2001:db8::1")).toEqual({ ip: { address: "2001:db8::1", family: "IPv6", port: 0 }, header: "2001:db8::1" });
    expect(await ask()).toEqual({ ip: null, header: null });
  });

  test("a Lambda HTTP event carries it as requestContext.http.sourceIp", async () => {
    await using shim = await startShim(`export const handler = async (event) => ({ statusCode: 200, body: event.requestContext.http.sourceIp });`);
    expect(await (await shim.request("/", { headers: { "x-forge-client-ip": "192.0.2.9" } })).text()).toBe("192.0.2.9");
    expect(await (await shim.request("/")).text()).toBe("127.0.0.1");
  });
});

}
