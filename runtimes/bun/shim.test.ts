import { describe, expect, test } from "bun:test";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseLogLine, readLines } from "../../src/pool/_log-parse.ts";
import { CONTROL_HEADER, CONTROL_HEALTH, CONTROL_SPECIALIZE } from "../../src/pool/driver.ts";
import { waitReady } from "../../src/pool/instance-client.ts";

const SHIM = join(import.meta.dir, "shim.ts");

interface Line {
  stream: "stdout" | "stderr";
  requestId?: string;
  text: string;
}

/** Runs the shim as the process driver would, with `code` as its bundle (or generic without). */
async function startShim(code?: string, env: Record<string, string> = {}) {
  const dir = await mkdtemp(join(tmpdir(), "forge-shim-"));
  const socketPath = join(dir, "s.sock");
  const token = crypto.randomUUID();
  let bundle: string | undefined;
  if (code !== undefined) {
    bundle = join(dir, "fn.mjs");
    await writeFile(bundle, code);
  }
  const proc = Bun.spawn([process.execPath, "--no-install", "--no-env-file", SHIM], {
    cwd: dir,
    env: {
      PATH: "/usr/bin:/bin",
      ...env,
      FORGE_SOCKET: socketPath,
      FORGE_CONTROL_TOKEN: token,
      FORGE_INSTANCE_ID: "test",
      FORGE_WORK_DIR: dir,
      ...(bundle ? { FORGE_BUNDLE: bundle, FORGE_FUNCTION: "fn", FORGE_VERSION: "7" } : {}),
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
      const built = await Bun.build({ entrypoints: [entry], target: "bun", format: "esm" });
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
       export default (request) => Response.json({ atLoad, now: Object.keys(process.env), bun: Object.keys(Bun.env) });`,
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
      expect(mine("stdout")).toEqual([`start ${id}`, "{", "  nested: {", "    value: 1,", "  },", "}", `end ${id}`]);
      expect(mine("stderr")).toEqual(["line one", "line two", "cart has 3 items"]);
    }
    expect(shim.lines.filter((l) => l.text.startsWith("start ")).every((l) => l.text === `start ${l.requestId}`)).toBe(true);
  });
});
