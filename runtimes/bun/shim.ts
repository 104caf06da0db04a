/**
 * forge's in-instance shim: the program every Bun instance runs (a child process of the
 * process driver, or PID 1 of a FROM-scratch container). It listens on a Unix socket,
 * answers forge's control routes (health, specialize) and hands every other request to
 * the function module, tagging the function's console output with the request id.
 *
 * Self-contained on purpose: it is copied alone into an image holding just the bun
 * binary, so it imports only Bun and node: builtins.
 *
 * Run as `bun --no-install --no-env-file runtimes/bun/shim.ts`.
 */
// Only node:async_hooks is imported up front: a cold start pays for every module loaded
// before the socket listens (measured on Bun 1.4.5: node:crypto ~9 ms, node:util ~3 ms,
// node:fs ~3 ms, node:async_hooks <1 ms), so the others are avoided or loaded when needed.
import { AsyncLocalStorage } from "node:async_hooks";

// Kept in step with src/pool/driver.ts (the shim cannot import from src: it ships alone).
const CONTROL_HEADER = "x-forge-control";
const CONTROL_HEALTH = "/__forge/health";
const CONTROL_SPECIALIZE = "/__forge/specialize";
const REQUEST_ID_HEADER = "x-forge-request-id";

// 1. Read the shim's own settings, then delete them so the function sees only its env.
const SHIM_VARS = [
  "FORGE_SOCKET",
  "FORGE_CONTROL_TOKEN",
  "FORGE_INSTANCE_ID",
  "FORGE_BUNDLE",
  "FORGE_WORK_DIR",
  "FORGE_FUNCTION",
  "FORGE_VERSION",
  "FORGE_TIMEOUT_MS",
  "FORGE_EXIT_WITH_PARENT",
] as const;
const settings = {
  socket: process.env.FORGE_SOCKET || undefined,
  token: process.env.FORGE_CONTROL_TOKEN || "",
  instanceId: process.env.FORGE_INSTANCE_ID || "",
  bundle: process.env.FORGE_BUNDLE || undefined,
  workDir: process.env.FORGE_WORK_DIR || process.env.TMPDIR || "/tmp",
  function: process.env.FORGE_FUNCTION || undefined,
  version: process.env.FORGE_VERSION ? Number(process.env.FORGE_VERSION) : undefined,
  // Only used for Lambda's getRemainingTimeInMillis(); forge enforces the real timeout.
  timeoutMs: Number(process.env.FORGE_TIMEOUT_MS) || 30_000,
  port: Number(process.env.PORT) || 8080,
  // Process driver: stdin is a pipe from forge, so its end means forge is gone.
  exitWithParent: process.env.FORGE_EXIT_WITH_PARENT === "1",
};
for (const name of SHIM_VARS) delete process.env[name];

// 2. Console: lines written during a request carry `[req:<id>] `; AsyncLocalStorage keeps
// concurrent requests apart. The originals are called with one preformatted string so
// ordering with other console output is unchanged.
const requestScope = new AsyncLocalStorage<string>();
type ConsoleMethod = (...args: unknown[]) => void;
function tagged(original: ConsoleMethod): ConsoleMethod {
  return (...args: unknown[]) => {
    const id = requestScope.getStore();
    if (id === undefined) return original(...args);
    const text = format(args);
    const prefix = `[req:${id}] `;
    original(prefix + (text.includes("\n") ? text.split("\n").join("\n" + prefix) : text));
  };
}

/** console's formatting without colors: printf-style through node:util, else inspect each value. */
function format(args: unknown[]): string {
  const first = args[0];
  if (typeof first === "string" && first.includes("%")) {
    const util = require("node:util") as typeof import("node:util");
    return util.format(...args);
  }
  let out = "";
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (i > 0) out += " ";
    out += typeof arg === "string" ? arg : arg instanceof Error ? (arg.stack ?? String(arg)) : Bun.inspect(arg);
  }
  return out;
}

for (const method of ["log", "info", "debug", "warn", "error"] as const) {
  console[method] = tagged(console[method].bind(console));
}

// 3. The function: one call shape, whatever the module exported.
type Invoke = (request: Request, requestId: string) => Promise<Response>;
interface Loaded {
  invoke: Invoke;
  function: string | undefined;
  version: number | undefined;
}
let loaded: Loaded | undefined;
let specializing = false;

class LoadError extends Error {}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

/** Turns a module namespace into an Invoke, or says why it cannot. */
function adapt(mod: Record<string, unknown>, fnName: string | undefined, fnVersion: number | undefined): Invoke {
  // A frozen snapshot: the function's own env (Workers-style `env`), forge's already gone.
  const env = Object.freeze({ ...process.env });
  const def = mod.default;
  // (a) `export default { fetch }`: Workers, Bun.serve options, a Hono app (function or object).
  if ((isObject(def) || typeof def === "function") && typeof (def as { fetch?: unknown }).fetch === "function") {
    const target = def as { fetch(request: Request, env: unknown, ctx: unknown): unknown };
    return async (request, requestId) =>
      toResponse(await target.fetch(request, env, executionContext(requestId)));
  }
  // (b) `export default (request) => Response`.
  if (typeof def === "function") {
    const fn = def as (request: Request, env: unknown, ctx: unknown) => unknown;
    return async (request, requestId) => toResponse(await fn(request, env, executionContext(requestId)));
  }
  // (c) `export function handler(event, context)`: Lambda behind an API Gateway v2 HTTP API.
  const handler = mod.handler ?? (isObject(def) ? def.handler : undefined);
  if (typeof handler === "function") {
    return (request, requestId) =>
      invokeLambda(handler as LambdaHandler, request, requestId, fnName, fnVersion);
  }
  const names = Object.keys(mod);
  throw new LoadError(
    `the module exports ${names.length ? names.join(", ") : "nothing"}; expected a default export with ` +
      "fetch(request, env, ctx), a default-exported function (request) => Response, or a named export handler(event, context)",
  );
}

function executionContext(requestId: string) {
  return {
    requestId,
    waitUntil(promise: unknown): void {
      // The instance outlives the request, so the work runs on; only surface its failure.
      Promise.resolve(promise).catch((err: unknown) => console.error("waitUntil task failed:", err));
    },
    passThroughOnException(): void {},
  };
}

function toResponse(result: unknown): Response {
  if (result instanceof Response) return result;
  throw new TypeError(`the function returned ${describe(result)} instead of a Response`);
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : typeof value;
}

// --- Lambda ---

type LambdaHandler = (event: unknown, context: unknown, callback?: (err: unknown, result?: unknown) => void) => unknown;

const TEXT_TYPES = /^(text\/|application\/(json|javascript|xml|x-www-form-urlencoded|graphql)|[^;]*\+(json|xml))/i;

async function invokeLambda(
  handler: LambdaHandler,
  request: Request,
  requestId: string,
  fnName: string | undefined,
  fnVersion: number | undefined,
): Promise<Response> {
  const started = Date.now();
  const event = await lambdaEvent(request, requestId, started);
  const context = {
    awsRequestId: requestId,
    functionName: fnName ?? "",
    functionVersion: fnVersion === undefined ? "$LATEST" : String(fnVersion),
    invokedFunctionArn: "",
    memoryLimitInMB: "",
    logGroupName: "",
    logStreamName: settings.instanceId,
    callbackWaitsForEmptyEventLoop: false,
    getRemainingTimeInMillis: () => Math.max(0, started + settings.timeoutMs - Date.now()),
  };
  let result: unknown;
  if (handler.length >= 3) {
    // Callback-style handler (Node 1x-era Lambda code): the callback or the returned promise, whichever settles.
    result = await new Promise((resolve, reject) => {
      const returned = handler(event, context, (err, value) => (err ? reject(err) : resolve(value)));
      if (returned instanceof Promise) returned.then(resolve, reject);
    });
  } else {
    result = await handler(event, context);
  }
  return lambdaResponse(result);
}

async function lambdaEvent(request: Request, requestId: string, now: number) {
  const url = new URL(request.url);
  const headers: Record<string, string> = {};
  let cookies: string[] | undefined;
  for (const [name, value] of request.headers) {
    // Headers iteration is already lowercased and comma-joined, except set-cookie.
    if (name === "cookie") cookies = value.split(/;\s*/).filter(Boolean);
    else headers[name] = value;
  }
  let queryStringParameters: Record<string, string> | undefined;
  for (const [key, value] of url.searchParams) {
    queryStringParameters ??= {};
    queryStringParameters[key] = key in queryStringParameters ? `${queryStringParameters[key]},${value}` : value;
  }
  let body: string | undefined;
  let isBase64Encoded = false;
  if (request.body) {
    const bytes = new Uint8Array(await request.arrayBuffer());
    const type = request.headers.get("content-type");
    const text = request.headers.has("content-encoding") ? undefined : decodeText(bytes, type);
    if (text === undefined) {
      body = Buffer.from(bytes).toString("base64");
      isBase64Encoded = true;
    } else {
      body = text;
    }
  }
  return {
    version: "2.0",
    routeKey: "$default",
    rawPath: url.pathname,
    rawQueryString: url.search.slice(1),
    ...(cookies ? { cookies } : {}),
    headers,
    ...(queryStringParameters ? { queryStringParameters } : {}),
    requestContext: {
      accountId: "forge",
      apiId: "forge",
      domainName: url.hostname,
      domainPrefix: url.hostname.split(".")[0] ?? "",
      http: {
        method: request.method,
        path: url.pathname,
        protocol: "HTTP/1.1",
        sourceIp: "127.0.0.1",
        userAgent: request.headers.get("user-agent") ?? "",
      },
      requestId,
      routeKey: "$default",
      stage: "$default",
      time: new Date(now).toUTCString(),
      timeEpoch: now,
    },
    ...(body !== undefined ? { body } : {}),
    isBase64Encoded,
  };
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Text for text-like types (and for an untyped body that is valid UTF-8), else undefined. */
function decodeText(bytes: Uint8Array, type: string | null): string | undefined {
  if (type && !TEXT_TYPES.test(type)) return undefined;
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

function lambdaResponse(result: unknown): Response {
  if (result instanceof Response) return result;
  if (result === undefined || result === null) return new Response(null, { status: 200 });
  if (typeof result === "string") {
    return new Response(result, { headers: { "content-type": "text/plain; charset=utf-8" } });
  }
  if (!isObject(result) || typeof result.statusCode !== "number") {
    // API Gateway's rule: a result without statusCode is the JSON body of a 200.
    return Response.json(result);
  }
  const headers = new Headers();
  if (isObject(result.headers)) {
    for (const [name, value] of Object.entries(result.headers)) {
      if (value !== undefined && value !== null) headers.set(name, String(value));
    }
  }
  if (isObject(result.multiValueHeaders)) {
    for (const [name, values] of Object.entries(result.multiValueHeaders)) {
      if (Array.isArray(values)) for (const value of values) headers.append(name, String(value));
    }
  }
  if (Array.isArray(result.cookies)) {
    for (const cookie of result.cookies) headers.append("set-cookie", String(cookie));
  }
  let body: string | Uint8Array | null = null;
  const raw = result.body;
  if (typeof raw === "string") {
    body = result.isBase64Encoded === true ? Buffer.from(raw, "base64") : raw;
  } else if (raw !== undefined && raw !== null) {
    // Lambda wants a string; be lenient with an object and send it as JSON.
    body = JSON.stringify(raw);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
  }
  return new Response(body, { status: result.statusCode, headers });
}

// --- loading ---

async function load(path: string, fnName: string | undefined, fnVersion: number | undefined): Promise<Loaded> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(path)) as Record<string, unknown>;
  } catch (err) {
    throw new LoadError(`the module failed to load: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
  return { invoke: adapt(mod, fnName, fnVersion), function: fnName, version: fnVersion };
}

async function specialize(request: Request): Promise<Response> {
  if (loaded || specializing) {
    return jsonError(409, "already_specialized", "this instance already serves a function; a cell is specialized once");
  }
  let body: unknown;
  try {
    body = await request.json();
  } catch {
    return jsonError(400, "invalid_json", "the specialize body is not JSON");
  }
  if (
    !isObject(body) ||
    typeof body.function !== "string" ||
    typeof body.version !== "number" ||
    typeof body.code !== "string" ||
    !isObject(body.env)
  ) {
    return jsonError(400, "bad_request", "expected {function: string, version: number, code: string, env: object}");
  }
  const started = performance.now();
  specializing = true;
  const file = `${settings.workDir}/fn-${crypto.randomUUID()}.mjs`;
  const env = body.env as Record<string, unknown>;
  const previous: Record<string, string | undefined> = {};
  try {
    await Bun.write(file, body.code, { mode: 0o600 });
    for (const [name, value] of Object.entries(env)) {
      previous[name] = process.env[name];
      process.env[name] = String(value);
    }
    loaded = await load(file, body.function, body.version);
  } catch (err) {
    // Stay generic: undo the env so a later attempt starts clean.
    for (const [name, value] of Object.entries(previous)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    await Bun.file(file)
      .delete()
      .catch(() => {});
    const message = err instanceof Error ? err.message : String(err);
    console.error(`forge: specialize failed: ${message}`);
    return jsonError(400, "specialize_failed", message);
  } finally {
    specializing = false;
  }
  return Response.json({ ok: true, loadMs: performance.now() - started });
}

// --- serving ---

function jsonError(status: number, code: string, message: string, hint?: string): Response {
  return Response.json({ error: { code, message, ...(hint ? { hint } : {}) } }, { status });
}

/** Constant-time comparison with the control token (no token: no control routes). */
function isControl(header: string | null): boolean {
  const token = settings.token;
  if (header === null || token.length === 0 || header.length !== token.length) return false;
  let diff = 0;
  for (let i = 0; i < token.length; i++) diff |= header.charCodeAt(i) ^ token.charCodeAt(i);
  return diff === 0;
}

async function handle(request: Request): Promise<Response> {
  if (isControl(request.headers.get(CONTROL_HEADER))) {
    const path = new URL(request.url).pathname;
    if (path === CONTROL_HEALTH && request.method === "GET") {
      return Response.json({
        ok: true,
        specialized: loaded !== undefined,
        function: loaded?.function ?? null,
        version: loaded?.version ?? null,
        pid: process.pid,
      });
    }
    if (path === CONTROL_SPECIALIZE && request.method === "POST") return specialize(request);
  }
  const fn = loaded;
  if (!fn) {
    return jsonError(503, "not_specialized", "this instance does not serve a function yet", "forge sends the function first");
  }
  let requestId = request.headers.get(REQUEST_ID_HEADER);
  if (!requestId) {
    requestId = crypto.randomUUID();
    request.headers.set(REQUEST_ID_HEADER, requestId);
  }
  const id = requestId;
  return requestScope.run(id, async () => {
    try {
      return await fn.invoke(request, id);
    } catch (err) {
      // Inside the scope, so every line of the stack carries the request id.
      console.error(err);
      const message = err instanceof Error ? err.message : String(err);
      return jsonError(500, "function_error", message, `see forge logs ${fn.function ?? "<function>"} for the stack`);
    }
  });
}

// A function's floating promise should not take down an instance that other requests share.
process.on("unhandledRejection", (reason) => console.error("unhandled rejection:", reason));

// 4. Load the bundle given at start (a function instance), or stay generic (a stem cell).
if (settings.bundle) {
  try {
    loaded = await load(settings.bundle, settings.function, settings.version);
  } catch (err) {
    console.error(`forge: ${err instanceof Error ? err.message : String(err)}`);
    if (err instanceof Error && err.cause) console.error(err.cause);
    process.exit(1);
  }
}

// 5. Listen. Forge's timeouts apply upstream, so the shim's own idle timeout is off.
// bun-types allow idleTimeout only with a port, yet Bun honors it on a Unix socket too
// (checked on 1.4.5: without it a request idle for 10 s is cut); spread untyped to pass it.
const noIdleTimeout: object = { idleTimeout: 0 };

function listenOnSocket(path: string) {
  // Socket mode 0666: forge may run as another uid than the container's user. Through the
  // umask rather than chmod, which would need node:fs on the cold path.
  const umask = process.umask(0o111);
  try {
    return Bun.serve({ unix: path, fetch: handle, ...noIdleTimeout });
  } finally {
    process.umask(umask);
  }
}

async function listen() {
  if (!settings.socket) return Bun.serve({ hostname: "0.0.0.0", port: settings.port, fetch: handle, ...noIdleTimeout });
  try {
    return listenOnSocket(settings.socket);
  } catch (err) {
    if ((err as { code?: unknown }).code !== "EADDRINUSE") throw err;
    // A socket file left by an earlier life of this instance (a restarted container).
    await Bun.file(settings.socket).delete();
    return listenOnSocket(settings.socket);
  }
}
const server = await listen();

// A child of a forge that died (even by SIGKILL) must not live on, orphaned, holding its
// socket: nothing would ever stop it, and a restarted forge has no label to find it by.
if (settings.exitWithParent) {
  void (async () => {
    try {
      for await (const _ of Bun.stdin.stream()) {
        // forge never writes; any bytes are ignored
      }
    } finally {
      // forge died without stopping this instance: nobody else will remove its folder.
      // (Imported here, not up front: node:fs costs start-up time every instance pays.)
      // Only the instance's own folder: the one its socket lives in, named by forge.
      const own = settings.socket !== undefined && settings.socket === `${settings.workDir}/s.sock`;
      if (own) {
        const { rmSync } = await import("node:fs");
        try {
          rmSync(settings.workDir, { recursive: true, force: true });
        } catch {
          // best effort
        }
      }
      process.exit(0);
    }
  })();
}

// As PID 1 in a container, SIGTERM is ignored unless handled.
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    void server.stop(true);
    process.exit(0);
  });
}
