/**
 * forge's in-instance shim: the program every bun and node instance runs (a child process of
 * the process driver, or PID 1 of a FROM-scratch container). It listens on a Unix socket,
 * answers forge's control routes (health, specialize, invoke, scheduled, drain) and hands
 * every other request to the function module, tagging the function's console output with
 * the request id. Workers modules get Workers semantics (`env`, `ctx.waitUntil`,
 * `scheduled`), Lambda handlers those of Lambda's Node.js runtime (context, AWS_* env,
 * `awslambda.streamifyResponse`).
 *
 * Self-contained on purpose: it is copied alone into an image holding just the bun
 * binary, so it imports only Bun and node: builtins. On Node it is bundled with
 * runtimes/node/serve.ts (its Bun.serve) by src/build/node-shim.ts; the few other places
 * that differ test `ON_BUN`.
 *
 * Run as `bun --no-install --no-env-file runtimes/js/shim.ts`, or `node shim.mjs` (the bundle).
 */
// Only node:async_hooks is imported up front: a cold start pays for every module loaded
// before the socket listens (measured on Bun 1.4.5: node:crypto ~9 ms, node:util ~3 ms,
// node:fs ~3 ms, node:async_hooks <1 ms), so the others are avoided or loaded when needed
// (node:stream only once a module calls awslambda.streamifyResponse).
import { AsyncLocalStorage } from "node:async_hooks";

/** Bun runs the shim as is; Node runs it bundled with runtimes/node/serve.ts. */
const ON_BUN = typeof Bun !== "undefined";
/** A builtin module, synchronously, loaded only when first needed (Bun and Node 20.16+). */
function builtin<T>(name: string): T {
  return process.getBuiltinModule(name) as T;
}

// Kept in step with src/pool/driver.ts (the shim cannot import from src: it ships alone).
const CONTROL_HEADER = "x-forge-control";
const CONTROL_HEALTH = "/__forge/health";
const CONTROL_SPECIALIZE = "/__forge/specialize";
const CONTROL_INVOKE = "/__forge/invoke";
const CONTROL_SCHEDULED = "/__forge/scheduled";
const CONTROL_DRAIN = "/__forge/drain";
/** A stem cell's own warm-up (see warmUp): a Workers and a Lambda call of throwaway modules. */
const CONTROL_WARM_UP = "/__forge/warm-up";
const REQUEST_ID_HEADER = "x-forge-request-id";
const SCHEDULE_CRON_HEADER = "x-forge-schedule-cron";
const SCHEDULE_TICK_HEADER = "x-forge-schedule-tick";
/** Upper bound of a drain, ms (header on POST /__forge/drain); DEFAULT_DRAIN_MS without it. */
const DRAIN_MS_HEADER = "x-forge-drain-ms";
const DEFAULT_DRAIN_MS = 30_000;
/** The client's address, set by forge's gateway on every request (a client's own value is cut). */
const CLIENT_IP_HEADER = "x-forge-client-ip";
/**
 * On a drain, how long an open WebSocket whose async handler is still running may finish it
 * before the close (the drain's bound if shorter); idle sockets are closed at once. Enough for
 * a reply in progress, short enough not to hold a retired instance's memory for long.
 */
const WEBSOCKET_DRAIN_GRACE_MS = 5_000;
/** The close a drain sends: 1001 Going Away (RFC 6455 7.4.1), clients reconnect to the new version. */
const GOING_AWAY = 1001;
/** Stack frames kept in a load error: enough to find the line, short enough for a 400. */
const LOAD_ERROR_FRAMES = 8;

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
  "FORGE_FUNCTION_DIR",
  "FORGE_MEMORY_MB",
  "FORGE_HANDLER",
  "FORGE_REGION",
  "FORGE_ENV_NAMES",
] as const;
const startEnv = process.env;
const settings = {
  socket: startEnv.FORGE_SOCKET || undefined,
  token: startEnv.FORGE_CONTROL_TOKEN || "",
  instanceId: startEnv.FORGE_INSTANCE_ID || "",
  bundle: startEnv.FORGE_BUNDLE || undefined,
  workDir: startEnv.FORGE_WORK_DIR || startEnv.TMPDIR || "/tmp",
  port: Number(startEnv.PORT) || 8080,
  // Process driver: stdin is a pipe from forge, so its end means forge is gone.
  exitWithParent: startEnv.FORGE_EXIT_WITH_PARENT === "1",
  // Names of the function's own variables (the Workers `env`); unset by older drivers.
  envNames: startEnv.FORGE_ENV_NAMES === undefined ? undefined : startEnv.FORGE_ENV_NAMES.split(",").filter(Boolean),
};
/** What the instance is told about the function it serves (at start, or by specialize). */
interface FunctionInfo {
  name: string | undefined;
  version: number | undefined;
  /** The function's folder: working directory and LAMBDA_TASK_ROOT. */
  dir: string | undefined;
  /** Only for Lambda's getRemainingTimeInMillis(); forge enforces the real timeout. */
  timeoutMs: number;
  memoryMb: number | undefined;
  /** Export to call as the Lambda handler ("hello", or a dotted path "handlers.hello"). */
  handler: string | undefined;
  region: string;
}
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_REGION = "us-east-1";
const startInfo: FunctionInfo = {
  name: startEnv.FORGE_FUNCTION || undefined,
  version: startEnv.FORGE_VERSION ? Number(startEnv.FORGE_VERSION) : undefined,
  dir: startEnv.FORGE_FUNCTION_DIR || undefined,
  timeoutMs: Number(startEnv.FORGE_TIMEOUT_MS) || DEFAULT_TIMEOUT_MS,
  memoryMb: Number(startEnv.FORGE_MEMORY_MB) || undefined,
  handler: startEnv.FORGE_HANDLER || undefined,
  region: startEnv.FORGE_REGION || DEFAULT_REGION,
};
for (const name of SHIM_VARS) delete process.env[name];

/**
 * Variables of the runtime, never of the function: left out of the Workers `env` when the
 * driver did not say which names are the function's (FORGE_ENV_NAMES).
 */
const SYSTEM_VARS = new Set(["PATH", "HOME", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_", "HOSTNAME", "USER", "LOGNAME", "SHELL", "TERM", "LANG"]);

/** The Workers `env`: the function's own variables, nothing of the runtime's (see functionEnv). */
function startWorkersEnv(): Readonly<Record<string, string>> {
  const env: Record<string, string> = {};
  const names = settings.envNames ?? Object.keys(process.env).filter((name) => !SYSTEM_VARS.has(name));
  for (const name of names) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return functionEnv(env);
}

// 2. Requests in flight. A Call is one request's state and, for Workers modules, its `ctx`.
// AsyncLocalStorage carries it through the function's async work: console lines, waitUntil
// failures and stray errors (a throwing timer) find their request by it.
const requestScope = new AsyncLocalStorage<Call>();
/** Calls not answered yet: a stray error with no scope fails the only one (Lambda: one at a time). */
const unanswered = new Set<Call>();
/** ctx.waitUntil work not settled yet (health `pending`, drain). */
let pendingWork = 0;
let drainWaiters: (() => void)[] = [];

class Call {
  readonly requestId: string;
  /** The request a fetch handler got: a Workers WebSocketPair answer upgrades it. */
  request: Request | undefined = undefined;
  #answer: ((response: Response) => void) | undefined;
  /** Scheduled events collect their waitUntil work: the tick is done when it is. */
  #collected: Promise<unknown>[] | undefined;
  /** server.upgrade() took the request: the connection is a WebSocket's, no answer is sent. */
  #upgraded = false;

  constructor(requestId: string) {
    this.requestId = requestId;
  }

  // --- the Workers ctx ---

  waitUntil(promise: unknown): void {
    const work = Promise.resolve(promise);
    pendingWork++;
    work.then(workSettled, (err: unknown) => {
      workSettled();
      this.log("waitUntil task failed:", err);
    });
    this.#collected?.push(work);
  }

  passThroughOnException(): void {
    // forge has no origin to fall back to: an exception is forge's JSON 500 either way.
  }

  // --- forge's side (not for the function) ---

  /** Runs `work` in this request's scope; its Response (or error) answers the request. */
  run<A, B>(work: (call: Call, a: A, b: B) => Response | Promise<Response>, a: A, b: B): Promise<Response> {
    return new Promise<Response>((resolve) => {
      this.#answer = resolve;
      unanswered.add(this);
      requestScope.run(this, runCall, this, work, a, b);
    });
  }

  get answered(): boolean {
    return this.#answer === undefined;
  }

  /** The function's result: a Response answers (a streamed one once its first chunk is there). */
  respond(value: unknown): void {
    if (this.#upgraded) {
      // Bun-style code returns nothing after server.upgrade(), Hono an empty 200: Bun sends neither.
      if (value instanceof NativeResponse && streamBodied.has(value)) void value.body?.cancel().catch(() => {});
      this.#settle(new NativeResponse(null));
      return;
    }
    if (!(value instanceof NativeResponse)) {
      this.fail(new TypeError(`the function returned ${describe(value)} instead of a Response`));
      return;
    }
    if (this.#answer === undefined) {
      // Answered already (a stray error failed it): nobody reads this body.
      if (streamBodied.has(value)) void value.body?.cancel().catch(() => {});
      return;
    }
    if (pairAnswers !== undefined && value.status === 101) {
      const client = pairAnswers.get(value);
      if (client !== undefined) {
        this.#acceptPair(client, value);
        return;
      }
    }
    if (streamBodied.has(value)) {
      firstChunkFirst(value, this).then(
        (response) => this.#settle(response),
        (err: unknown) => this.fail(err, "the response body stream failed before its first chunk:"),
      );
      return;
    }
    this.#settle(value);
  }

  /** The request failed: the error is logged under its id and, if still unanswered, it gets forge's JSON 500. */
  fail(err: unknown, label?: string): void {
    if (label === undefined) this.log(err);
    else this.log(label, err);
    this.#settle(functionError(err));
  }

  /** console.error in this request's scope, so every line carries its id. */
  log(...args: unknown[]): void {
    requestScope.run(this, logError, args);
  }

  collectWork(): void {
    this.#collected = [];
  }

  /** The function's server.upgrade(request) succeeded. */
  markUpgraded(): void {
    this.#upgraded = true;
  }

  /** Waits for the collected waitUntil work, including work added while waiting; the first failure, if any. */
  async settleCollected(): Promise<{ failed: unknown } | undefined> {
    const work = this.#collected ?? [];
    for (let done = 0; done < work.length; ) {
      const batch = work.slice(done);
      done = work.length;
      for (const outcome of await Promise.allSettled(batch)) {
        if (outcome.status === "rejected") return { failed: outcome.reason };
      }
    }
    return undefined;
  }

  /** A Workers answer `new Response(null, { status: 101, webSocket: client })`: the request becomes that pair's socket. */
  #acceptPair(client: PairSocket, answer: Response): void {
    const serverEnd = PairSocket.serverEndOf(client);
    const request = this.request;
    if (serverEnd !== undefined) serverEnd.protocol = answer.headers.get("sec-websocket-protocol") ?? "";
    const upgraded =
      serverEnd !== undefined &&
      request !== undefined &&
      server.upgrade(request, { data: new Connection(this, PairSocket.events, serverEnd), headers: upgradeHeaders(answer.headers) });
    if (!upgraded) {
      this.fail(new TypeError("the function answered 101 with a WebSocket, but the request is not a WebSocket upgrade (GET with Upgrade: websocket)"));
      return;
    }
    this.#upgraded = true;
    this.#settle(new NativeResponse(null));
  }

  #settle(response: Response): void {
    const answer = this.#answer;
    if (answer === undefined) return;
    this.#answer = undefined;
    unanswered.delete(this);
    answer(response);
  }
}

function runCall<A, B>(call: Call, work: (call: Call, a: A, b: B) => Response | Promise<Response>, a: A, b: B): void {
  let result: Response | Promise<Response>;
  try {
    result = work(call, a, b);
  } catch (err) {
    call.fail(err);
    return;
  }
  if (result instanceof Promise) {
    result.then(
      (value) => call.respond(value),
      (err: unknown) => call.fail(err),
    );
  } else {
    call.respond(result);
  }
}

function logError(args: unknown[]): void {
  console.error(...args);
}

function workSettled(): void {
  if (--pendingWork > 0) return;
  const waiters = drainWaiters;
  drainWaiters = [];
  for (const wake of waiters) wake();
}

/** Resolves once no waitUntil work is pending, or after `boundMs`. */
async function drained(boundMs: number): Promise<void> {
  if (pendingWork > 0) await wokenWithin(drainWaiters, boundMs);
}

/** Waits until one of `waiters` is called (true), at most `boundMs` (false). */
function wokenWithin(waiters: (() => void)[], boundMs: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), boundMs);
    waiters.push(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

// 3. Stray errors: a throwing timer or a floating rejection from a function's work. Logged
// under the request that caused it, which fails (JSON 500) if it has not answered yet; the
// instance and the other requests go on. Bun 1.4.5 gives the AsyncLocalStorage store of the
// throwing callback inside "uncaughtException" for timers, setImmediate, nextTick and event
// emitters, but not for a throw in a queueMicrotask callback nor ever in "unhandledRejection"
// (checked): those are pinned on the only call in flight of a Lambda handler (Lambda's own
// rule: it fails the current invocation) and otherwise logged untagged, failing nobody.
function onStray(label: string, err: unknown): void {
  let call = requestScope.getStore();
  if (call === undefined && loaded?.kind === "lambda" && unanswered.size === 1) {
    for (const only of unanswered) call = only;
  }
  if (call === undefined) console.error(`forge: ${label} (not tied to a request):`, err);
  else call.fail(err, `${label}:`);
}
process.on("uncaughtException", (err) => onStray("uncaught exception", err));
process.on("unhandledRejection", (reason) => onStray("unhandled rejection", reason));

// 4. Console: lines written during a request carry `[req:<id>] `. The originals are called
// with one preformatted string so ordering with other console output is unchanged.
type ConsoleMethod = (...args: unknown[]) => void;
function tagged(original: ConsoleMethod): ConsoleMethod {
  return (...args: unknown[]) => {
    const call = requestScope.getStore();
    if (call === undefined) return original(...args);
    const text = format(args);
    const prefix = `[req:${call.requestId}] `;
    original(prefix + (text.includes("\n") ? text.split("\n").join("\n" + prefix) : text));
  };
}

/** console's formatting without colors: printf-style through node:util, else inspect each value. */
function format(args: unknown[]): string {
  const first = args[0];
  if (typeof first === "string" && first.includes("%")) {
    return builtin<typeof import("node:util")>("node:util").format(...args);
  }
  let out = "";
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (i > 0) out += " ";
    out += typeof arg === "string" ? arg : arg instanceof Error ? (arg.stack ?? String(arg)) : inspect(arg);
  }
  return out;
}

/** Bun.inspect, or node:util's inspect on Node (both print objects as console.log does). */
const inspect: (value: unknown) => string = ON_BUN ? Bun.inspect : (value) => builtin<typeof import("node:util")>("node:util").inspect(value);

for (const method of ["log", "info", "debug", "warn", "error"] as const) {
  console[method] = tagged(console[method].bind(console));
}

// 5. Streamed responses. Bun sends a Response's head only with its body's first chunk, and
// cuts the connection when the stream fails first. So a stream-bodied Response is read up
// to its first chunk here: a failure there becomes forge's JSON 500, a later one cuts the
// stream, both logged under the request id. Telling a stream body from a string body must
// not touch `.body` (on Bun 1.4.5 that turns a string body's text/plain into
// application/octet-stream), so `new Response(...)` is marked at construction: the global
// Response is a subclass that remembers stream bodies (~0 ns per construction, measured;
// a Proxy costed ~1 µs). A Response straight from fetch() is not marked and streams as is.
const NativeResponse = Response;
const streamBodied = new WeakSet<Response>();
/**
 * Node: the string a Response was made with, so the node server sends it without reading the
 * body stream (~15% of a warm request). Strings only: bytes could change after the Response copied them.
 */
const bodySources = ON_BUN ? undefined : new WeakMap<Response, string>();
/**
 * Node: Responses known to have a whole body (made with a string, bytes, a Blob, form data:
 * anything but a stream), which the node server sends with a Content-Length in one write.
 * Anything not known so (a fetch() answer, a clone, a stream) is streamed.
 */
const wholeBodied = ON_BUN ? undefined : new WeakSet<Response>();
/** A Response of the shim's own with a stream body. */
function streamResponse(body: ReadableStream<Uint8Array>, init: ResponseInit): Response {
  return new NativeResponse(body, init);
}
/** A Response of the shim's own with a whole body (see wholeBodied). */
function wholeResponse(body: string | Uint8Array | null, init?: ResponseInit): Response {
  const response = new NativeResponse(body, init);
  wholeBodied?.add(response);
  if (typeof body === "string") bodySources?.set(response, body);
  return response;
}
/** Workers answers with a WebSocketPair's client end; made on first use (most functions never do). */
let pairAnswers: WeakMap<Response, PairSocket> | undefined;
class MarkingResponse extends NativeResponse {
  constructor(body?: ConstructorParameters<typeof NativeResponse>[0], init?: ResponseInit) {
    super(body, init);
    if (typeof body === "object" && body !== null && (body instanceof ReadableStream || Symbol.asyncIterator in body)) {
      streamBodied.add(this);
    } else if (wholeBodied !== undefined) {
      wholeBodied.add(this);
      if (typeof body === "string") bodySources?.set(this, body);
    }
    // Workers: `new Response(null, { status: 101, webSocket: client })` answers with a WebSocketPair.
    const webSocket = (init as { webSocket?: unknown } | null | undefined)?.webSocket;
    if (webSocket !== undefined && webSocket instanceof PairSocket) (pairAnswers ??= new WeakMap()).set(this, webSocket);
  }

  /** Node: Response.json as a Response of this class, so its text is sent without reading the body stream. */
  static override json(data: unknown, init?: ResponseInit): Response {
    if (ON_BUN) return NativeResponse.json(data, init);
    const text = JSON.stringify(data);
    if (text === undefined) throw new TypeError("Response.json: the value is not JSON serializable");
    const headers = new Headers(init?.headers as ConstructorParameters<typeof Headers>[0]);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new MarkingResponse(text, { ...init, headers });
  }

  // `fetch()` answers are native Responses: they stay `instanceof Response` (Hono checks it).
  static override [Symbol.hasInstance](value: unknown): boolean {
    return this === MarkingResponse
      ? value instanceof NativeResponse
      : Function.prototype[Symbol.hasInstance].call(this, value);
  }
}
Object.defineProperty(MarkingResponse, "name", { value: "Response" });
globalThis.Response = MarkingResponse as typeof Response;

/** The same response, its body resuming after the first chunk; rejects if the stream fails before it. */
async function firstChunkFirst(response: Response, call: Call): Promise<Response> {
  const reader = (response.body as ReadableStream<unknown>).getReader();
  const first = await reader.read();
  const init = { status: response.status, statusText: response.statusText, headers: response.headers };
  if (first.done) return new NativeResponse(null, init);
  const body = new ReadableStream<unknown>({
    start(controller) {
      controller.enqueue(first.value);
    },
    async pull(controller) {
      try {
        const next = await reader.read();
        if (next.done) controller.close();
        else controller.enqueue(next.value);
      } catch (err) {
        call.log("the response body stream failed after the response started (connection cut):", err);
        controller.error(err);
      }
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return streamResponse(body as ReadableStream<Uint8Array>, init);
}

// 6. The function: what the module exported, and how it is called.
type FetchHandler = (request: Request, env: unknown, ctx: unknown) => unknown;
type LambdaHandler = (event: unknown, context: unknown, callback?: unknown) => unknown;
type ScheduledHandler = (controller: unknown, env: unknown, ctx: unknown) => unknown;
interface Loaded {
  kind: "fetch" | "lambda";
  info: FunctionInfo;
  env: Readonly<Record<string, string>>;
  fetch: FetchHandler | undefined;
  lambda: LambdaHandler | undefined;
  /** Marked by awslambda.streamifyResponse: called (event, responseStream, context). */
  streaming: boolean;
  highWaterMark: number | undefined;
  scheduled: ScheduledHandler | undefined;
  /** Bun.serve's `websocket` handlers and options, as exported beside fetch. */
  websocket: WebSocketHandler | undefined;
  lambdaStatic: LambdaStatic;
}
let loaded: Loaded | undefined;
let specializing = false;

class LoadError extends Error {
  /** Where a syntax error is (`at file:line:column` and the line), when the error itself does not say. */
  where: string[] = [];
}

/**
 * Node: where a module's syntax error is. Node keeps it out of a dynamic import's error
 * (it prints it only for an uncaught one), so `node --check` is asked, on this failure path only.
 */
function syntaxErrorWhere(path: string): string[] {
  const { spawnSync } = builtin<typeof import("node:child_process")>("node:child_process");
  const checked = spawnSync(process.execPath, ["--check", path], { encoding: "utf8", timeout: 10_000 });
  // "<path>:<line>", the line, a caret under the column, then the error.
  const [head, text, caret] = (checked.stderr ?? "").split("\n");
  const line = head?.startsWith(path + ":") ? head.slice(path.length + 1) : undefined;
  if (line === undefined || !/^\d+$/.test(line)) return [];
  const column = caret !== undefined && caret.includes("^") ? caret.indexOf("^") + 1 : 1;
  return [`at ${path}:${line}:${column}`, ...(text?.trim() ? [`  ${text}`] : [])];
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function hasProps(value: unknown): value is Record<string, unknown> {
  return (typeof value === "object" && value !== null) || typeof value === "function";
}

/** `a.b.c` inside `root`, or undefined. */
function resolvePath(root: unknown, path: string): unknown {
  let value = root;
  for (const key of path.split(".")) {
    if (!hasProps(value)) return undefined;
    value = value[key];
  }
  return value;
}

/** The exports, as a load error lists them: `handler, default (function: use, handler)`. */
function describeExports(mod: Record<string, unknown>): string {
  const names = Object.keys(mod).map((name) => {
    const value = mod[name];
    if (name !== "default" || !hasProps(value)) return name;
    const inner = Object.keys(value);
    return `default (${typeof value}${inner.length ? `: ${inner.join(", ")}` : ""})`;
  });
  return names.length ? names.join(", ") : "nothing";
}

/**
 * Decides how the module is called, in this order: (1) the configured handler name (Lambda);
 * (2) a default export with a fetch method (Workers, Bun.serve options, a Hono app); (3) a
 * `handler` export or `default.handler` (CommonJS `module.exports.handler`, also beside
 * `module.exports = app`: Bun bundles a CommonJS entry as `export default module.exports`);
 * (4) a bare default function `(request, env, ctx) => Response`.
 */
function adapt(mod: Record<string, unknown>, info: FunctionInfo, env: Readonly<Record<string, string>>): Loaded {
  const def = mod.default;
  const scheduledFn = hasProps(def) && typeof def.scheduled === "function" ? def.scheduled : mod.scheduled;
  const scheduled =
    typeof scheduledFn === "function"
      ? (controller: unknown, e: unknown, ctx: unknown) => scheduledFn.call(def, controller, e, ctx)
      : undefined;
  const base = { info, env, scheduled, websocket: websocketOf(def, mod), lambdaStatic: lambdaStatic(info) };
  const lambda = (fn: LambdaHandler): Loaded => ({
    ...base,
    kind: "lambda",
    fetch: undefined,
    lambda: fn,
    streaming: (fn as unknown as Record<symbol, unknown>)[HANDLER_STREAMING] === STREAM_RESPONSE,
    highWaterMark: Number((fn as unknown as Record<symbol, unknown>)[HANDLER_HIGH_WATER_MARK]) || undefined,
  });
  const fetchKind = (fn: FetchHandler | undefined): Loaded => ({
    ...base,
    kind: "fetch",
    fetch: fn,
    lambda: undefined,
    streaming: false,
    highWaterMark: undefined,
  });
  if (info.handler !== undefined) {
    const named = resolvePath(mod, info.handler) ?? resolvePath(def, info.handler);
    if (typeof named !== "function") {
      throw new LoadError(
        `the handler "${info.handler}" is ${named === undefined ? "not exported" : `a ${describe(named)}, not a function`}; ` +
          `the module exports ${describeExports(mod)}`,
      );
    }
    return lambda(named as LambdaHandler);
  }
  if (hasProps(def) && typeof def.fetch === "function") {
    const target = def as { fetch: FetchHandler };
    return fetchKind((request, e, ctx) => target.fetch(request, e, ctx));
  }
  const handler = mod.handler ?? (hasProps(def) ? def.handler : undefined);
  if (typeof handler === "function") return lambda(handler as LambdaHandler);
  if (typeof def === "function") return fetchKind(def as FetchHandler);
  // A Workers module that only runs on cron ticks.
  if (scheduled) return fetchKind(undefined);
  throw new LoadError(
    `the module exports ${describeExports(mod)}; expected a default export with fetch(request, env, ctx), ` +
      "a default-exported function (request) => Response, or a handler(event, context) export",
  );
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : typeof value;
}

function runFetch(call: Call, fn: Loaded, request: Request): Response | Promise<Response> {
  if (fn.fetch === undefined) throw new Error("the module exports no fetch handler (only scheduled)");
  call.request = request;
  return fn.fetch(request, fn.env, call) as Response | Promise<Response>;
}

/**
 * The Bun.serve `websocket` object the module exports: `default.websocket` (Bun.serve options,
 * Hono's `export default { fetch: app.fetch, websocket }`) or a `websocket` export beside the app.
 */
function websocketOf(def: unknown, mod: Record<string, unknown>): WebSocketHandler | undefined {
  const found = hasProps(def) && isObject(def.websocket) ? def.websocket : mod.websocket;
  if (!isObject(found)) return undefined;
  return WEBSOCKET_EVENTS.some((event) => typeof found[event] === "function") ? (found as WebSocketHandler) : undefined;
}

// --- Lambda ---

// The Symbol.for names Lambda's runtime uses, so code that marks handlers itself works too.
const HANDLER_STREAMING = Symbol.for("aws.lambda.runtime.handler.streaming");
const HANDLER_HIGH_WATER_MARK = Symbol.for("aws.lambda.runtime.handler.streaming.highWaterMark");
const STREAM_RESPONSE = "response";
const HTTP_INTEGRATION_TYPE = "application/vnd.awslambda.http-integration-response";
const PRELUDE = Symbol("forge.lambda.prelude");
/** Lambda's account id is not forge's to know: ARNs carry a zero account. */
const ACCOUNT_ID = "000000000000";

/** The parts of a Lambda context that are the same for every event. */
interface LambdaStatic {
  functionName: string;
  functionVersion: string;
  memoryLimitInMB: string;
  invokedFunctionArn: string;
  logGroupName: string;
  logStreamName: string;
}

function lambdaStatic(info: FunctionInfo): LambdaStatic {
  const name = info.name ?? "function";
  const version = info.version === undefined ? "$LATEST" : String(info.version);
  const day = new Date().toISOString().slice(0, 10).replaceAll("-", "/");
  return {
    functionName: name,
    functionVersion: version,
    memoryLimitInMB: String(info.memoryMb ?? 128),
    invokedFunctionArn: `arn:aws:lambda:${info.region}:${ACCOUNT_ID}:function:${name}`,
    logGroupName: `/aws/lambda/${name}`,
    // Lambda's shape, `<date>/[<version>]<instance>`: one stream per instance.
    logStreamName: `${day}/[${version}]${settings.instanceId || crypto.randomUUID().replaceAll("-", "")}`,
  };
}

/**
 * The variables Lambda's Node.js runtime sets, before the module loads (code reads
 * AWS_REGION at import). Set for every module: which kind it is shows only once loaded.
 * AWS_LAMBDA_RUNTIME_API is left out on purpose: there is no Runtime API to poll here.
 * Returns the previous values, for a specialize that fails.
 */
function setLambdaEnv(info: FunctionInfo, own: Readonly<Record<string, string>>): Map<string, string | undefined> {
  const fixed = lambdaStatic(info);
  const vars: Record<string, string> = {
    AWS_LAMBDA_FUNCTION_NAME: fixed.functionName,
    AWS_LAMBDA_FUNCTION_VERSION: fixed.functionVersion,
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: fixed.memoryLimitInMB,
    AWS_LAMBDA_LOG_GROUP_NAME: fixed.logGroupName,
    AWS_LAMBDA_LOG_STREAM_NAME: fixed.logStreamName,
    AWS_REGION: info.region,
    AWS_DEFAULT_REGION: info.region,
    AWS_EXECUTION_ENV: `AWS_Lambda_nodejs${process.versions.node.split(".")[0]}.x`,
    LAMBDA_TASK_ROOT: info.dir ?? process.cwd(),
    LAMBDA_RUNTIME_DIR: ON_BUN ? import.meta.dir : import.meta.dirname,
  };
  // TZ: UTC unless the function sets its own. Lambda's runtime runs with TZ=:UTC and Workers
  // always run in UTC, so code formats dates assuming it; a process-driver instance would
  // otherwise inherit the forge host's zone (the FROM-scratch image has no zone data anyway).
  // forge's drivers set it at spawn (changing it here costs ~0.4 ms on a cell's specialization).
  if (own.TZ === undefined && process.env.TZ === undefined) vars.TZ = "UTC";
  const previous = new Map<string, string | undefined>();
  for (const [name, value] of Object.entries(vars)) {
    const was = process.env[name];
    // Writing process.env costs ~40 us a name in Bun: a stem cell has the runtime's own already (step 7).
    if (was === value) continue;
    previous.set(name, was);
    process.env[name] = value;
  }
  return previous;
}

function restoreEnv(previous: Map<string, string | undefined>): void {
  for (const [name, value] of previous) {
    if (value === undefined) delete process.env[name];
    else process.env[name] = value;
  }
}

/** Runs a Lambda handler to its result: the returned promise, the callback, or context.succeed/fail/done, whichever first. */
function runLambda(fn: Loaded, call: Call, event: unknown, started: number): Promise<unknown> {
  const handler = fn.lambda as LambdaHandler;
  return new Promise<unknown>((resolve, reject) => {
    let finished = false;
    let timer: Timer | undefined;
    const finish = (failed: boolean, value: unknown) => {
      if (finished) return;
      finished = true;
      if (timer !== undefined) clearTimeout(timer);
      if (failed) reject(value);
      else resolve(value);
    };
    // Lambda's rule for the callback and done(): an error argument that is neither null nor undefined fails.
    const callback = (err: unknown, result?: unknown) =>
      err !== undefined && err !== null ? finish(true, err) : finish(false, result);
    const context = lambdaContext(fn, call, started, callback);
    let returned: unknown;
    try {
      returned = handler(event, context, callback);
    } catch (err) {
      finish(true, err);
      return;
    }
    if (isThenable(returned)) {
      returned.then(
        (value) => finish(false, value),
        (err: unknown) => finish(true, err ?? "handled"),
      );
    } else if (returned !== undefined && handler.length < 3) {
      // Lambda would ignore a synchronous return value and answer null once the event loop
      // empties; a shared instance has no such moment, so the value itself is the answer.
      finish(false, returned);
    }
    // As in Lambda, the invocation ends at the function's timeout (forge's own timeout cuts
    // the request at the same moment; this frees the call, so a hung handler leaves nothing behind).
    if (!finished) timer = setTimeout(() => finish(true, timedOut(fn)), Math.max(0, started + fn.info.timeoutMs - Date.now()));
  });
}

/** Lambda's timeout error. */
function timedOut(fn: Loaded): Error {
  const err = new Error(`Task timed out after ${(fn.info.timeoutMs / 1000).toFixed(2)} seconds`);
  err.name = "TimeoutError";
  return err;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return hasProps(value) && typeof value.then === "function";
}

function lambdaContext(fn: Loaded, call: Call, started: number, done: (err: unknown, result?: unknown) => void) {
  let waitsForEmptyEventLoop = true;
  const deadline = started + fn.info.timeoutMs;
  return {
    ...fn.lambdaStatic,
    awsRequestId: call.requestId,
    /**
     * Settable as in Lambda, but an instance serving a long-lived socket never has an empty
     * event loop: the invocation ends at the callback either way.
     */
    get callbackWaitsForEmptyEventLoop(): boolean {
      return waitsForEmptyEventLoop;
    },
    set callbackWaitsForEmptyEventLoop(value: boolean) {
      waitsForEmptyEventLoop = value;
    },
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    succeed: (result?: unknown) => done(null, result),
    fail: (err?: unknown) => done(err ?? "handled"),
    done,
  };
}

/** Lambda's error shape, as forge's JSON: message and type (the error's name). */
function errorParts(err: unknown): { message: string; type: string } {
  if (err instanceof Error) return { message: err.message, type: err.name };
  return { message: String(err), type: typeof err };
}

function functionError(err: unknown): Response {
  const fnName = loaded?.info.name ?? "<function>";
  return jsonError(500, "function_error", errorParts(err).message, `see forge logs ${fnName} for the stack`);
}

/** Invoke and schedule answers: the result as JSON, or the error with its type. */
async function lambdaResult(fn: Loaded, call: Call, event: unknown, started: number): Promise<Response> {
  let result: unknown;
  try {
    result = await runLambda(fn, call, event, started);
  } catch (err) {
    call.log(err);
    return Response.json({ error: { code: "function_error", ...errorParts(err) } }, { status: 500 });
  }
  return wholeResponse(JSON.stringify(result === undefined ? null : result), {
    headers: { "content-type": "application/json" },
  });
}

async function runLambdaHttp(call: Call, fn: Loaded, request: Request): Promise<Response> {
  const started = Date.now();
  const event = await lambdaEvent(request, call.requestId, started);
  if (fn.streaming) return streamLambda(fn, call, event, started);
  return lambdaResponse(await runLambda(fn, call, event, started));
}

const TEXT_TYPES = /^(text\/|application\/(json|javascript|xml|x-www-form-urlencoded|graphql)|[^;]*\+(json|xml))/i;

async function lambdaEvent(request: Request, requestId: string, now: number) {
  const url = new URL(request.url);
  const headers: Record<string, string> = {};
  let cookies: string[] | undefined;
  // Bun.serve hands over repeated headers already joined with ", " (checked on 1.4.5, also
  // through toJSON()), and a single value may hold ", " itself (user-agent, dates): which
  // commas were API Gateway's "," cannot be told apart, so values pass as Bun joined them.
  for (const [name, value] of request.headers) {
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
        sourceIp: request.headers.get(CLIENT_IP_HEADER) || "127.0.0.1",
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
  if (result instanceof NativeResponse) return result;
  if (result === undefined || result === null) return new NativeResponse(null, { status: 200 });
  if (typeof result === "string") {
    return wholeResponse(result, { headers: { "content-type": "text/plain; charset=utf-8" } });
  }
  if (!isObject(result) || typeof result.statusCode !== "number") {
    // API Gateway's rule: a result without statusCode is the JSON body of a 200.
    return Response.json(result);
  }
  const headers = headersOf(result.headers, result.cookies);
  if (isObject(result.multiValueHeaders)) {
    for (const [name, values] of Object.entries(result.multiValueHeaders)) {
      if (Array.isArray(values)) for (const value of values) headers.append(name, String(value));
    }
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
  return wholeResponse(body, { status: result.statusCode, headers });
}

function headersOf(fields: unknown, cookies: unknown): Headers {
  const headers = new Headers();
  if (isObject(fields)) {
    for (const [name, value] of Object.entries(fields)) {
      if (value !== undefined && value !== null) headers.set(name, String(value));
    }
  }
  if (Array.isArray(cookies)) {
    for (const cookie of cookies) headers.append("set-cookie", String(cookie));
  }
  return headers;
}

// --- Lambda response streaming ---

/** What a streaming handler writes to: a Node Writable, as Lambda's responseStream is. */
interface LambdaResponseStream {
  setContentType(type: string): void;
  [PRELUDE]?: unknown;
}
type ResponseStreamClass = new (onHead: (response: Response) => void, highWaterMark: number | undefined) => LambdaResponseStream & {
  readonly headSent: boolean;
  destroy(err?: Error): void;
  once(event: "close", listener: () => void): void;
};
let responseStreamClass: ResponseStreamClass | undefined;

/** Built on first use: node:stream costs start-up time only modules that stream pay. */
function loadResponseStreamClass(): ResponseStreamClass {
  if (responseStreamClass) return responseStreamClass;
  const { Writable } = builtin<typeof import("node:stream")>("node:stream");
  class ResponseStream extends Writable {
    #contentType = "application/octet-stream";
    #onHead: (response: Response) => void;
    #controller: ReadableStreamDefaultController<Uint8Array> | undefined;
    #body: ReadableStream<Uint8Array>;
    #headSent = false;
    /** A write waiting for the reader to want more (backpressure). */
    #blocked: (() => void) | undefined;
    [PRELUDE]?: unknown;

    constructor(onHead: (response: Response) => void, highWaterMark: number | undefined) {
      super(highWaterMark === undefined ? {} : { highWaterMark });
      this.#onHead = onHead;
      this.#body = new ReadableStream<Uint8Array>({
        start: (controller) => {
          this.#controller = controller;
        },
        pull: () => {
          const blocked = this.#blocked;
          this.#blocked = undefined;
          blocked?.();
        },
        cancel: () => {
          // The client went away.
          this.destroy();
        },
      });
    }

    get headSent(): boolean {
      return this.#headSent;
    }

    setContentType(type: string): void {
      if (this.#headSent) throw new Error("Cannot set content-type, too late.");
      this.#contentType = type;
    }

    // Lambda's stream sends anything but strings and bytes as JSON.
    override write(chunk: unknown, encoding?: unknown, callback?: unknown): boolean {
      const data = typeof chunk === "string" || chunk instanceof Uint8Array ? chunk : JSON.stringify(chunk);
      return (super.write as (...args: unknown[]) => boolean)(data, encoding, callback);
    }

    override _write(chunk: Uint8Array, _encoding: string, callback: (error?: Error | null) => void): void {
      this.#sendHead();
      const controller = this.#controller as ReadableStreamDefaultController<Uint8Array>;
      try {
        controller.enqueue(chunk);
      } catch (err) {
        callback(err as Error);
        return;
      }
      if ((controller.desiredSize ?? 1) > 0) callback();
      else this.#blocked = () => callback();
    }

    override _final(callback: (error?: Error | null) => void): void {
      this.#sendHead();
      try {
        this.#controller?.close();
      } catch {
        // cancelled by the reader already
      }
      callback();
    }

    override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
      if (error && this.#headSent) {
        try {
          this.#controller?.error(error);
        } catch {
          // closed already
        }
      }
      callback(error);
    }

    #sendHead(): void {
      if (this.#headSent) return;
      this.#headSent = true;
      const prelude = this[PRELUDE];
      if (this.#contentType === HTTP_INTEGRATION_TYPE && isObject(prelude)) {
        const status = typeof prelude.statusCode === "number" ? prelude.statusCode : 200;
        this.#onHead(streamResponse(this.#body, { status, headers: headersOf(prelude.headers, prelude.cookies) }));
      } else {
        this.#onHead(streamResponse(this.#body, { headers: { "content-type": this.#contentType } }));
      }
    }
  }
  responseStreamClass = ResponseStream as unknown as ResponseStreamClass;
  return responseStreamClass;
}

/**
 * A streamifyResponse handler: the response goes out as the handler writes. Until the
 * head is out a failure is forge's JSON 500; after, the stream is cut, logged. As in
 * Lambda the invocation ends with the stream (a resolved handler with an open stream waits).
 */
function streamLambda(fn: Loaded, call: Call, event: unknown, started: number): Promise<Response> {
  return new Promise<Response>((resolve, reject) => {
    const Stream = loadResponseStreamClass();
    const stream = new Stream(resolve, fn.highWaterMark);
    const fail = (err: unknown) => {
      if (!stream.headSent) {
        reject(err);
        return;
      }
      call.log("the streaming handler failed after the response started (connection cut):", err);
      stream.destroy(err instanceof Error ? err : new Error(String(err)));
    };
    const context = lambdaContext(fn, call, started, (err) => {
      if (err !== undefined && err !== null) fail(err);
    });
    let returned: unknown;
    try {
      returned = (fn.lambda as LambdaHandler)(event, stream, context);
    } catch (err) {
      fail(err);
      return;
    }
    if (!isThenable(returned)) {
      fail(new Error("Streaming does not support non-async handlers."));
      return;
    }
    returned.then((value) => {
      if (value !== undefined) call.log("Streaming handlers ignore return values.");
    }, fail);
    // The function's timeout ends the invocation, streamed or not, as in Lambda.
    const timer = setTimeout(() => fail(timedOut(fn)), Math.max(0, started + fn.info.timeoutMs - Date.now()));
    stream.once("close", () => clearTimeout(timer));
  });
}

/** `globalThis.awslambda`, as Lambda's Node.js runtime defines it before the module loads. */
class HttpResponseStream {
  static from(stream: LambdaResponseStream, prelude: unknown): LambdaResponseStream {
    stream.setContentType(HTTP_INTEGRATION_TYPE);
    stream[PRELUDE] = prelude;
    return stream;
  }
}
Object.defineProperty(globalThis, "awslambda", {
  value: {
    streamifyResponse<H extends object>(handler: H, options?: { highWaterMark?: number }): H {
      loadResponseStreamClass();
      const marks = handler as Record<symbol, unknown>;
      marks[HANDLER_STREAMING] = STREAM_RESPONSE;
      if (typeof options?.highWaterMark === "number") marks[HANDLER_HIGH_WATER_MARK] = options.highWaterMark;
      return handler;
    },
    HttpResponseStream,
  },
  writable: true,
  configurable: true,
});

// --- control routes: invoke, scheduled ---

/** The request forge sent, as a fetch handler sees it: `POST <path>`, forge's control header gone. */
function asFunctionRequest(request: Request, path: string): Request {
  const headers = new Headers(request.headers);
  headers.delete(CONTROL_HEADER);
  const origin = new URL(request.url).origin;
  return new Request(origin + (path || "/"), { method: "POST", headers, body: request.body, duplex: "half" } as RequestInit);
}

/** JSON payload as the event: empty is {}, invalid JSON a 400 invalid_payload (as a Response). */
async function payloadEvent(request: Request, empty: () => unknown): Promise<{ event: unknown } | Response> {
  const text = await request.text();
  if (text.trim() === "") return { event: empty() };
  try {
    return { event: JSON.parse(text) as unknown };
  } catch (err) {
    return jsonError(400, "invalid_payload", `the payload is not JSON: ${errorParts(err).message}`);
  }
}

async function runInvoke(call: Call, fn: Loaded, request: Request): Promise<Response> {
  const path = new URL(request.url).pathname.slice(CONTROL_INVOKE.length);
  if (fn.kind === "fetch") return runFetch(call, fn, asFunctionRequest(request, path + new URL(request.url).search));
  const started = Date.now();
  const parsed = await payloadEvent(request, () => ({}));
  if (parsed instanceof NativeResponse) return parsed;
  if (fn.streaming) return streamLambda(fn, call, parsed.event, started);
  return lambdaResult(fn, call, parsed.event, started);
}

async function runScheduled(call: Call, fn: Loaded, request: Request): Promise<Response> {
  const url = new URL(request.url);
  const path = url.pathname.slice(CONTROL_SCHEDULED.length);
  const cron = request.headers.get(SCHEDULE_CRON_HEADER) ?? "";
  const tick = request.headers.get(SCHEDULE_TICK_HEADER);
  const scheduledTime = (tick !== null && Date.parse(tick)) || Date.now();
  if (fn.scheduled) {
    // Workers: scheduled(controller, env, ctx); the tick is done when its waitUntil work is.
    call.collectWork();
    const controller = { cron, scheduledTime, type: "scheduled", noRetry(): void {} };
    try {
      await fn.scheduled(controller, fn.env, call);
      const outcome = await call.settleCollected();
      if (outcome) throw outcome.failed;
    } catch (err) {
      call.log(err);
      return Response.json({ error: { code: "function_error", ...errorParts(err) } }, { status: 500 });
    }
    return Response.json({ ok: true });
  }
  if (fn.kind === "lambda") {
    const started = Date.now();
    const parsed = await payloadEvent(request, () => scheduledEvent(fn, scheduledTime));
    if (parsed instanceof NativeResponse) return parsed;
    return lambdaResult(fn, call, parsed.event, started);
  }
  return runFetch(call, fn, asFunctionRequest(request, path + url.search));
}

/** EventBridge's "Scheduled Event", as a Lambda handler on a schedule rule gets it. */
function scheduledEvent(fn: Loaded, scheduledTime: number) {
  return {
    version: "0",
    id: crypto.randomUUID(),
    "detail-type": "Scheduled Event",
    source: "aws.events",
    account: ACCOUNT_ID,
    // EventBridge's times carry no milliseconds.
    time: new Date(scheduledTime).toISOString().replace(/\.\d{3}Z$/, "Z"),
    region: fn.info.region,
    resources: [],
    detail: {},
  };
}

// --- loading ---

async function load(path: string, info: FunctionInfo, env: Readonly<Record<string, string>>): Promise<Loaded> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import(path)) as Record<string, unknown>;
  } catch (err) {
    const failure = new LoadError(`the module failed to load: ${errorParts(err).message}`, { cause: err });
    if (!ON_BUN && err instanceof SyntaxError) failure.where = syntaxErrorWhere(path);
    throw failure;
  }
  return adapt(mod, info, env);
}

/** The message and the first frames of where a load failed (a syntax error: its position). */
function loadFailure(err: unknown): { message: string; stack: string } {
  const message = errorParts(err).message;
  // A LoadError of the shim's own (nothing usable exported) has no frames worth showing.
  const cause = err instanceof LoadError ? err.cause : err;
  const frames: string[] = err instanceof LoadError ? [...err.where] : [];
  if (frames.length === 0 && hasProps(cause)) {
    if (typeof cause.stack === "string") {
      // Node's own frames (its module loader) say nothing about the function's code.
      for (const line of cause.stack.split("\n")) if (line.trimStart().startsWith("at ") && !line.includes("(node:internal/")) frames.push(line.trim());
    }
    const position = cause.position;
    if (frames.length === 0 && isObject(position) && typeof position.file === "string") {
      // Bun's BuildMessage (a syntax error) has no stack, only where it is.
      frames.push(`at ${position.file}:${String(position.line)}:${String(position.column)}`);
      if (typeof position.lineText === "string") frames.push(`  ${position.lineText}`);
    }
  }
  return { message, stack: frames.slice(0, LOAD_ERROR_FRAMES).join("\n") };
}

const SPECIALIZE_SHAPE =
  "expected {function: string, version: number, env: object, code?: string, dir?: string, bundle?: string, " +
  "timeoutMs?: number, memoryMb?: number, handler?: string, region?: string} with code or bundle";

function optional(body: Record<string, unknown>, name: string, type: "string" | "number"): boolean {
  return body[name] === undefined || typeof body[name] === type;
}

/** Writes a file only this instance's user reads. */
function writeOwn(path: string, text: string): Promise<unknown> {
  if (ON_BUN) return Bun.write(path, text, { mode: 0o600 });
  return builtin<typeof import("node:fs/promises")>("node:fs/promises").writeFile(path, text, { mode: 0o600 });
}

function removeFile(path: string): Promise<unknown> {
  if (ON_BUN) return Bun.file(path).delete();
  return builtin<typeof import("node:fs/promises")>("node:fs/promises").unlink(path);
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
    !isObject(body.env) ||
    (typeof body.code !== "string" && typeof body.bundle !== "string") ||
    !optional(body, "code", "string") ||
    !optional(body, "bundle", "string") ||
    !optional(body, "dir", "string") ||
    !optional(body, "timeoutMs", "number") ||
    !optional(body, "memoryMb", "number") ||
    !optional(body, "handler", "string") ||
    !optional(body, "region", "string")
  ) {
    return jsonError(400, "bad_request", SPECIALIZE_SHAPE);
  }
  const started = performance.now();
  specializing = true;
  const info: FunctionInfo = {
    name: body.function,
    version: body.version,
    dir: (body.dir as string | undefined) || undefined,
    timeoutMs: (body.timeoutMs as number | undefined) || DEFAULT_TIMEOUT_MS,
    memoryMb: (body.memoryMb as number | undefined) || undefined,
    handler: (body.handler as string | undefined) || undefined,
    region: (body.region as string | undefined) || DEFAULT_REGION,
  };
  const own: Record<string, string> = {};
  for (const [name, value] of Object.entries(body.env)) own[name] = String(value);
  const env = functionEnv(own);
  const cwd = process.cwd();
  const previous = new Map<string, string | undefined>();
  let written: string | undefined;
  try {
    for (const [name, value] of Object.entries(env)) {
      previous.set(name, process.env[name]);
      process.env[name] = value;
    }
    if (info.dir) process.chdir(info.dir);
    for (const [name, value] of setLambdaEnv(info, env)) if (!previous.has(name)) previous.set(name, value);
    let file = body.bundle as string | undefined;
    if (file === undefined) {
      written = `${settings.workDir}/fn-${crypto.randomUUID()}.mjs`;
      await writeOwn(written, body.code as string);
      file = written;
    }
    loaded = await load(file, info, env);
    const websocket = loaded.websocket;
    if (websocket !== undefined && WEBSOCKET_OPTIONS.some((name) => websocket[name] !== undefined)) {
      // Bun applies a reload's websocket options (maxPayloadLength...) to sockets opened after it (checked on 1.4.5).
      server.reload({ fetch: handle, ...serveOptions, ...websocketOptions() } as Parameters<typeof server.reload>[0]);
    }
  } catch (err) {
    // Stay generic: undo the env and folder so a later attempt starts clean.
    restoreEnv(previous);
    process.chdir(cwd);
    if (written !== undefined) {
      await removeFile(written).catch(() => {});
    }
    const failure = loadFailure(err);
    console.error(`forge: specialize failed: ${failure.message}${failure.stack ? `\n${failure.stack}` : ""}`);
    return Response.json({ error: { code: "specialize_failed", ...failure } }, { status: 400 });
  } finally {
    specializing = false;
  }
  return Response.json({ ok: true, loadMs: performance.now() - started, kind: loaded.kind });
}

// --- WebSockets: Bun's server.upgrade, Workers' WebSocketPair, the close on a drain ---

type ServerWebSocket<T> = Bun.ServerWebSocket<T>;
type WebSocketEvent = "open" | "message" | "close" | "drain" | "ping" | "pong";
type WebSocketListener = (ws: ServerWebSocket<unknown>, a?: unknown, b?: unknown) => unknown;
/** A Bun.serve `websocket` object, as a module exports it: handlers, and options (maxPayloadLength...). */
type WebSocketHandler = { [E in WebSocketEvent]?: WebSocketListener } & Record<string, unknown>;
const WEBSOCKET_EVENTS: readonly WebSocketEvent[] = ["open", "message", "close", "drain", "ping", "pong"];
/** Bun.serve `websocket` options a module may set (they apply once it is loaded: server.reload). */
const WEBSOCKET_OPTIONS = [
  "maxPayloadLength",
  "backpressureLimit",
  "closeOnBackpressureLimit",
  "idleTimeout",
  "publishToSelf",
  "sendPings",
  "perMessageDeflate",
] as const;

/**
 * The second argument of fetch is both the Workers `env` and Bun's `server`: Workers code
 * reads its settings, Bun code calls `server.upgrade(request)` and `server.requestIP(request)`
 * on the same object, and so do Hono's `hono/bun` helpers (with no `server` key they take
 * env itself for the server). The members are non-enumerable and the object is frozen, so
 * Object.keys, spreading and JSON see the function's settings only; a setting of the same
 * name wins over a member. What would reach past the function (stop, reload) is left out.
 */
const SERVER_MEMBERS: Record<string, PropertyDescriptor> = {
  upgrade: { value: upgrade },
  requestIP: { value: requestIP },
  // forge bounds a request's time upstream (timeoutMs); an idle timeout set on this socket
  // would later cut forge's kept-alive connection to the instance, so it is not passed on.
  timeout: { value: (_request: Request, _seconds: number): void => {} },
  publish: { value: (...args: Parameters<typeof server.publish>) => server.publish(...args) },
  subscriberCount: { value: (topic: string) => server.subscriberCount(topic) },
  pendingRequests: { get: () => server.pendingRequests },
  pendingWebSockets: { get: () => connections.size },
};

/** The function's settings, as the frozen `env` that is also its `server` (see SERVER_MEMBERS). */
function functionEnv(own: Record<string, string>): Readonly<Record<string, string>> {
  for (const [name, member] of Object.entries(SERVER_MEMBERS)) {
    if (!Object.hasOwn(own, name)) Object.defineProperty(own, name, member);
  }
  return Object.freeze(own);
}

/**
 * Bun's `server.requestIP`: the client forge's gateway saw (this socket's own peer is forge,
 * over a Unix socket). Null without the header: a request that did not come through the gateway.
 */
function requestIP(request: Request): { address: string; family: "IPv4" | "IPv6"; port: number } | null {
  const address = request.headers.get(CLIENT_IP_HEADER);
  if (!address) return null;
  return { address, family: address.includes(":") ? "IPv6" : "IPv4", port: 0 };
}

const NO_WEBSOCKET =
  "server.upgrade(): the module exports no websocket handlers; export them beside fetch: " +
  "export default { fetch, websocket: { open(ws) {}, message(ws, message) {}, close(ws, code, reason) {} } } " +
  '(with Hono: import { upgradeWebSocket, websocket } from "hono/bun"; export default { fetch: app.fetch, websocket })';

/** Bun's `server.upgrade(request, { data, headers })`, for the module's own `websocket` handlers. */
function upgrade(request: Request, options?: { data?: unknown; headers?: ConstructorParameters<typeof Headers>[0] }): boolean {
  const handler = loaded?.websocket;
  // As Bun.serve without `websocket` does: a throw, so the function's error names the cause.
  if (handler === undefined) throw new TypeError(NO_WEBSOCKET);
  const call = requestScope.getStore();
  const data = new Connection(call, handler, options?.data);
  const headers = options?.headers;
  const upgraded = server.upgrade(request, headers === undefined ? { data } : { data, headers });
  if (upgraded) call?.markUpgraded();
  return upgraded;
}

/**
 * One open WebSocket: the handlers its events go to (the module's, or a WebSocketPair's), the
 * upgrade request's Call (its console lines and stray errors carry that request's id), and
 * the function's `ws.data`. Until `open`, ws.data is the Connection itself.
 */
class Connection {
  readonly call: Call | undefined;
  readonly handler: WebSocketHandler;
  readonly data: unknown;
  ws: ServerWebSocket<unknown> | undefined = undefined;
  /** Handler promises not settled yet: a drain lets them finish, up to its grace, before the close. */
  busy = 0;
  /** A drain wants this socket closed once no handler of it runs. */
  leaving = false;

  constructor(call: Call | undefined, handler: WebSocketHandler, data: unknown) {
    this.call = call;
    this.handler = handler;
    this.data = data;
  }

  /** Closes once no handler of this socket runs: at once when idle. */
  leave(): void {
    this.leaving = true;
    if (this.busy === 0) this.goAway();
  }

  goAway(): void {
    // Bun sends the close frame, runs the close handler and ends the connection right away
    // (checked on 1.4.5): nothing waits for the client's closing frame. A second call is a no-op.
    this.ws?.close(GOING_AWAY, "going away");
  }
}

const connections = new Map<ServerWebSocket<unknown>, Connection>();
let websocketWaiters: (() => void)[] = [];
/** A drain began: a socket that opens from now on is closed at once. */
let retiring = false;

/** The shim's Bun.serve `websocket`: each event goes to its connection's handlers. */
const websocketEvents: Required<{ [E in WebSocketEvent]: WebSocketListener }> = {
  open(ws) {
    const conn = ws.data as Connection;
    ws.data = conn.data;
    conn.ws = ws;
    connections.set(ws, conn);
    dispatch(conn, "open", ws);
    if (retiring) conn.leave();
  },
  message(ws, message) {
    const conn = connections.get(ws);
    if (conn !== undefined) dispatch(conn, "message", ws, message);
  },
  close(ws, code, reason) {
    const conn = connections.get(ws);
    if (conn === undefined) return;
    connections.delete(ws);
    dispatch(conn, "close", ws, code, reason);
    if (connections.size > 0) return;
    const waiters = websocketWaiters;
    websocketWaiters = [];
    for (const wake of waiters) wake();
  },
  drain(ws) {
    const conn = connections.get(ws);
    if (conn !== undefined) dispatch(conn, "drain", ws);
  },
  ping(ws, data) {
    const conn = connections.get(ws);
    if (conn !== undefined) dispatch(conn, "ping", ws, data);
  },
  pong(ws, data) {
    const conn = connections.get(ws);
    if (conn !== undefined) dispatch(conn, "pong", ws, data);
  },
};

/** Bun.serve's `websocket`: the shim's events with the module's options (Bun's defaults without). */
function websocketConfig(handler: WebSocketHandler | undefined): object {
  const config: Record<string, unknown> = { ...websocketEvents };
  if (handler !== undefined) for (const name of WEBSOCKET_OPTIONS) if (handler[name] !== undefined) config[name] = handler[name];
  return config;
}

function dispatch(conn: Connection, event: WebSocketEvent, ws: ServerWebSocket<unknown>, a?: unknown, b?: unknown): void {
  const listener = conn.handler[event];
  if (typeof listener !== "function") return;
  if (conn.call === undefined) runListener(conn, event, listener, ws, a, b);
  else requestScope.run(conn.call, runListener, conn, event, listener, ws, a, b);
}

/** Runs one handler; a failure is logged and the socket stays open (as in Bun). Async work counts as pending, like waitUntil. */
function runListener(conn: Connection, event: WebSocketEvent, listener: WebSocketListener, ws: ServerWebSocket<unknown>, a: unknown, b: unknown): void {
  let result: unknown;
  try {
    result = listener.call(conn.handler, ws, a, b);
  } catch (err) {
    listenerFailed(conn, event, err);
    return;
  }
  if (!isThenable(result)) return;
  conn.busy++;
  pendingWork++;
  result.then(
    () => listenerSettled(conn),
    (err: unknown) => {
      listenerFailed(conn, event, err);
      listenerSettled(conn);
    },
  );
}

function listenerFailed(conn: Connection, event: WebSocketEvent, err: unknown): void {
  const label = `websocket ${event} handler failed:`;
  if (conn.call === undefined) console.error(`forge: ${label}`, err);
  else conn.call.log(label, err);
}

function listenerSettled(conn: Connection): void {
  workSettled();
  if (--conn.busy === 0 && conn.leaving) conn.goAway();
}

/**
 * A drain's part for WebSockets: every socket is closed with 1001 Going Away, an idle one at
 * once, one whose async handler still runs when that settles, at the latest after the grace
 * (WEBSOCKET_DRAIN_GRACE_MS, or the drain's bound if shorter).
 */
async function closeWebSockets(boundMs: number): Promise<void> {
  retiring = true;
  for (const conn of [...connections.values()]) conn.leave();
  if (connections.size === 0) return;
  if (await wokenWithin(websocketWaiters, Math.min(boundMs, WEBSOCKET_DRAIN_GRACE_MS))) return;
  for (const conn of [...connections.values()]) conn.goAway();
}

/** The function's 101 headers (a chosen Sec-WebSocket-Protocol, cookies) without those Bun's upgrade writes. */
function upgradeHeaders(headers: Headers): Headers {
  const out = new Headers(headers);
  for (const name of ["upgrade", "connection", "sec-websocket-accept", "content-length", "transfer-encoding"]) out.delete(name);
  return out;
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/**
 * One end of a Workers `WebSocketPair`. The function keeps the server end (accept,
 * addEventListener, send, close) and answers `new Response(null, { status: 101, webSocket:
 * client })`; the shim then upgrades the request and ties the server end to the real socket.
 * Events wait for accept(); send() and close() before the socket is open wait for it.
 */
class PairSocket extends EventTarget {
  static readonly CONNECTING = CONNECTING;
  static readonly OPEN = OPEN;
  static readonly CLOSING = CLOSING;
  static readonly CLOSED = CLOSED;

  /** The connection's handlers for a pair: ws.data is the server end. */
  static readonly events: WebSocketHandler = {
    open: (ws) => (ws.data as PairSocket).#opened(ws),
    message: (ws, message) => (ws.data as PairSocket).#received(message),
    close: (ws, code, reason) => (ws.data as PairSocket).#closed(Number(code), String(reason)),
  };

  static pair(): [client: PairSocket, server: PairSocket] {
    const client = new PairSocket();
    const serverEnd = new PairSocket();
    client.#peer = serverEnd;
    client.#isClient = true;
    serverEnd.#peer = client;
    return [client, serverEnd];
  }

  static serverEndOf(client: PairSocket): PairSocket | undefined {
    return client.#isClient ? client.#peer : undefined;
  }

  /** The subprotocol the function's 101 chose (its Sec-WebSocket-Protocol header). */
  protocol = "";
  readonly url = null;
  readonly extensions = "";
  #peer: PairSocket | undefined;
  #isClient = false;
  #ws: ServerWebSocket<unknown> | undefined;
  #state = CONNECTING;
  /** Events before accept(). */
  #held: Event[] | undefined = [];
  /** send() and close() before the socket opened. */
  #queued: ((ws: ServerWebSocket<unknown>) => void)[] = [];

  get readyState(): number {
    return this.#state;
  }

  accept(): void {
    this.#serverOnly("accept");
    const held = this.#held ?? [];
    this.#held = undefined;
    if (this.#state === CONNECTING) this.#state = OPEN;
    for (const event of held) this.dispatchEvent(event);
  }

  send(data: string | ArrayBuffer | ArrayBufferView): void {
    this.#serverOnly("send");
    if (this.#state >= CLOSING) throw new TypeError("Can't call WebSocket send() after close().");
    const ws = this.#ws;
    if (ws === undefined) this.#queued.push((open) => open.send(data as string | Uint8Array));
    else ws.send(data as string | Uint8Array);
  }

  close(code?: number, reason?: string): void {
    this.#serverOnly("close");
    if (this.#state >= CLOSING) return;
    this.#state = CLOSING;
    const ws = this.#ws;
    if (ws === undefined) this.#queued.push((open) => open.close(code, reason));
    else ws.close(code, reason);
  }

  #serverOnly(method: string): void {
    if (this.#isClient) {
      throw new TypeError(
        `${method}() on the client end of a WebSocketPair: answer new Response(null, { status: 101, webSocket: client }) and use the server end`,
      );
    }
  }

  #opened(ws: ServerWebSocket<unknown>): void {
    this.#ws = ws;
    if (this.#state === CONNECTING) this.#state = OPEN;
    const queued = this.#queued;
    this.#queued = [];
    for (const step of queued) step(ws);
  }

  #received(message: unknown): void {
    // Workers hand binary messages over as ArrayBuffer; Bun has a Buffer (a view on a shared pool).
    const data = typeof message === "string" ? message : new Uint8Array(message as Uint8Array).buffer;
    this.#emit(new MessageEvent("message", { data }));
  }

  #closed(code: number, reason: string): void {
    this.#state = CLOSED;
    this.#ws = undefined;
    this.#emit(new CloseEvent("close", { code, reason, wasClean: true }));
  }

  #emit(event: Event): void {
    if (this.#held === undefined) this.dispatchEvent(event);
    else this.#held.push(event);
  }
}

/** Workers' `new WebSocketPair()`: `{ 0: client, 1: server }`, as Object.values(pair) expects. */
class WebSocketPair {
  0: PairSocket;
  1: PairSocket;

  constructor() {
    const [client, serverEnd] = PairSocket.pair();
    this[0] = client;
    this[1] = serverEnd;
  }
}
if (!("WebSocketPair" in globalThis)) {
  Object.defineProperty(globalThis, "WebSocketPair", { value: WebSocketPair, writable: true, configurable: true });
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

function notSpecialized(): Response {
  return jsonError(503, "not_specialized", "this instance does not serve a function yet", "forge sends the function first");
}

/** The request's id (forge's own, unique), or a fresh one set on the request. */
function requestIdOf(request: Request): string {
  let requestId = request.headers.get(REQUEST_ID_HEADER);
  if (!requestId) {
    requestId = crypto.randomUUID();
    request.headers.set(REQUEST_ID_HEADER, requestId);
  }
  return requestId;
}

/** A stem cell's warm-up, while it runs (see warmUp). */
let warming: Promise<void> | undefined;

async function control(request: Request, path: string): Promise<Response | undefined> {
  if (path === CONTROL_HEALTH && request.method === "GET") {
    if (warming) await warming;
    return Response.json({
      ok: true,
      specialized: loaded !== undefined,
      function: loaded?.info.name ?? null,
      version: loaded?.info.version ?? null,
      pid: process.pid,
      kind: loaded?.kind ?? null,
      pending: pendingWork,
      websockets: connections.size,
    });
  }
  if (request.method !== "POST") return undefined;
  if (path === CONTROL_SPECIALIZE) return specialize(request);
  if (path === CONTROL_WARM_UP) return loaded || specializing ? jsonError(409, "already_specialized", "only a stem cell warms up") : warmCalls(request);
  if (path === CONTROL_DRAIN) {
    const bound = Number(request.headers.get(DRAIN_MS_HEADER));
    const boundMs = Number.isFinite(bound) && bound >= 0 && request.headers.has(DRAIN_MS_HEADER) ? bound : DEFAULT_DRAIN_MS;
    const started = Date.now();
    // WebSockets first: their close handlers' async work is pending work the drain waits for.
    await closeWebSockets(boundMs);
    await drained(Math.max(0, boundMs - (Date.now() - started)));
    return Response.json({ pending: pendingWork, websockets: connections.size });
  }
  const invoke = path === CONTROL_INVOKE || path.startsWith(CONTROL_INVOKE + "/");
  const scheduled = path === CONTROL_SCHEDULED || path.startsWith(CONTROL_SCHEDULED + "/");
  if (!invoke && !scheduled) return undefined;
  const fn = loaded;
  if (!fn) return notSpecialized();
  return new Call(requestIdOf(request)).run(invoke ? runInvoke : runScheduled, fn, request);
}

function handle(request: Request): Response | Promise<Response> {
  if (isControl(request.headers.get(CONTROL_HEADER))) {
    return control(request, new URL(request.url).pathname).then((answer) => answer ?? serve(request));
  }
  return serve(request);
}

function serve(request: Request): Response | Promise<Response> {
  const fn = loaded;
  if (!fn) return notSpecialized();
  return new Call(requestIdOf(request)).run(fn.kind === "fetch" ? runFetch : runLambdaHttp, fn, request);
}

/** Bun.serve's last resort (production mode: never its HTML page with paths). */
function onServeError(err: unknown): Response {
  console.error("forge: the shim failed to serve a request:", err);
  return jsonError(500, "shim_error", errorParts(err).message);
}

// 7. Load the bundle given at start (a function instance), or stay generic (a stem cell),
// with what does not depend on the function already in the environment, off a cell's
// specialization path.
if (!settings.bundle) setLambdaEnv({ ...startInfo, dir: undefined }, {});
if (settings.bundle) {
  const env = startWorkersEnv();
  try {
    if (startInfo.dir) process.chdir(startInfo.dir);
    setLambdaEnv(startInfo, env);
    loaded = await load(settings.bundle, startInfo, env);
  } catch (err) {
    const failure = loadFailure(err);
    console.error(`forge: ${failure.message}${failure.stack ? `\n${failure.stack}` : ""}`);
    process.exit(1);
  }
}

// 8. Listen. Forge's timeouts apply upstream, so the shim's own idle timeout is off.
// bun-types allow idleTimeout only with a port, yet Bun honors it on a Unix socket too
// (checked on 1.4.5: without it a request idle for 10 s is cut); spread untyped to pass it.
const serveOptions: object = { idleTimeout: 0, development: false, error: onServeError };

/** Bun.serve's `websocket`, known at serve time (a stem cell has no module yet), with the loaded module's options. */
function websocketOptions(): object {
  return { websocket: websocketConfig(loaded?.websocket) };
}

/**
 * True when a Response's body is whole (a string, bytes, JSON) rather than a stream: the node
 * server sends it with a Content-Length in one write. Bun tells this apart itself.
 */
function wholeBody(response: Response): string | Uint8Array | boolean {
  if (response.bodyUsed) return false;
  return bodySources?.get(response) ?? wholeBodied?.has(response) ?? false;
}

/** Node: runtimes/node/serve.ts in Bun.serve's place (bundled in; never loaded on Bun). */
async function listenOnNode() {
  const { serveNode } = await import("../node/serve.ts");
  const where = settings.socket === undefined ? { port: settings.port } : { unix: settings.socket };
  return serveNode({ ...where, fetch: handle, error: onServeError, wholeBody });
}

function listenOnSocket(path: string) {
  // Socket mode 0666: forge may run as another uid than the container's user. Through the
  // umask rather than chmod, which would need node:fs on the cold path.
  const umask = process.umask(0o111);
  try {
    return Bun.serve({ unix: path, fetch: handle, ...serveOptions, ...websocketOptions() });
  } finally {
    process.umask(umask);
  }
}

async function listen() {
  if (!ON_BUN) return listenOnNode();
  if (!settings.socket) return Bun.serve({ hostname: "0.0.0.0", port: settings.port, fetch: handle, ...serveOptions, ...websocketOptions() });
  try {
    return listenOnSocket(settings.socket);
  } catch (err) {
    if ((err as { code?: unknown }).code !== "EADDRINUSE") throw err;
    // A socket file left by an earlier life of this instance (a restarted container).
    await Bun.file(settings.socket).delete();
    return listenOnSocket(settings.socket);
  }
}
// Typed for the Connection every upgrade carries until `open` (then the function's own data).
const server = (await listen()) as unknown as Bun.Server<unknown>;

/**
 * A stem cell sends itself two requests over its own socket once it listens: a specialize
 * with a body it refuses (400: nothing changes) and a warm-up (warmCalls).
 * The first request of a runtime walks code paths that later ones do not (on Node the HTTP
 * parser, the body stream and undici's Request and Response are compiled on first use):
 * measured, a node cell's specialize took ~12 ms and its first request ~4 ms without this,
 * against ~2.5 ms of module load and ~1.7 ms a later request. A cell does it before anyone
 * can take it, so the function's first request does not pay for it.
 */
/**
 * The calls a function's first request makes, on throwaway modules: a Workers fetch and a
 * Lambda handler given an HTTP event, each through a Call (its scope, its answer), so that
 * code is compiled before a function's first request needs it. Nothing is logged or kept.
 */
async function warmCalls(request: Request): Promise<Response> {
  const info: FunctionInfo = { ...startInfo, name: "warm-up", version: 0 };
  const workers = adapt({ default: { fetch: (r: Request) => new Response(`warm ${new URL(r.url).pathname}`, { headers: { "content-type": "text/plain" } }) } }, info, {});
  const lambda = adapt({ handler: async (event: { rawPath?: string }) => ({ statusCode: 200, headers: { "content-type": "text/plain" }, body: `warm ${event.rawPath}` }) }, info, {});
  const answers = await Promise.all([new Call("warm-up-fetch").run(runFetch, workers, request), new Call("warm-up-lambda").run(runLambdaHttp, lambda, request)]);
  const texts = await Promise.all(answers.map((a) => a.text()));
  return Response.json({ ok: true, answers: texts });
}

async function warmUp(socket: string): Promise<void> {
  const net = builtin<typeof import("node:net")>("node:net");
  const body = "{}";
  const requests =
    `POST ${CONTROL_SPECIALIZE} HTTP/1.1\r\nhost: warm-up\r\n${CONTROL_HEADER}: ${settings.token}\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}` +
    `POST ${CONTROL_WARM_UP} HTTP/1.1\r\nhost: warm-up\r\n${CONTROL_HEADER}: ${settings.token}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`;
  // A few rounds: code runs interpreted at first, and faster once the engine has seen it a few times.
  for (let round = 0; round < WARM_UP_ROUNDS; round++) await warmUpRound(net, socket, requests);
}

/** Rounds of the warm-up: ~3 ms each on a fresh node process, all before the cell answers its health check. */
const WARM_UP_ROUNDS = 4;

function warmUpRound(net: typeof import("node:net"), socket: string, requests: string): Promise<void> {
  return new Promise<void>((resolve) => {
    const conn = net.createConnection(socket, () => conn.end(requests));
    conn.on("data", () => {});
    conn.on("close", () => resolve());
    conn.on("error", () => resolve());
    conn.setTimeout(5_000, () => conn.destroy());
  });
}

// Health answers once the warm-up is over: forge takes a cell only when it is ready, and
// warm, so a first request never runs beside the warm-up.
if (!loaded && settings.socket !== undefined) warming = warmUp(settings.socket);

// A child of a forge that died (even by SIGKILL) must not live on, orphaned, holding its
// socket: nothing would ever stop it, and a restarted forge has no label to find it by.
if (settings.exitWithParent) {
  void (async () => {
    try {
      for await (const _ of ON_BUN ? Bun.stdin.stream() : process.stdin) {
        // forge never writes; any bytes are ignored
      }
    } finally {
      // forge died without stopping this instance: nobody else will remove its folder.
      // (Imported here, not up front: node:fs costs start-up time every instance pays.)
      // Only the instance's own folder: the one its socket lives in, named by forge.
      const own = settings.socket !== undefined && settings.socket === `${settings.workDir}/s.sock`;
      if (own) {
        const { rmSync } = builtin<typeof import("node:fs")>("node:fs");
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
