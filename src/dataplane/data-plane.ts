/**
 * The data path: a request for a function gets a lease on an instance, is proxied to it
 * over its Unix socket with bodies streamed both ways, and the lease is given back when
 * the response body has been sent. Errors map to 404 / 429 / 503 / 504 / 502.
 */
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError, isForgeError } from "../errors.ts";
import type { InvocationRecorder } from "../functions/index.ts";
import { Abort, CONTROL_HEADER, CONTROL_INVOKE, CONTROL_SCHEDULED, UpstreamPool, type InstanceExit, type Lease, type PoolManager, type UpstreamReply } from "../pool/index.ts";
import type { InvocationRecord } from "../store/index.ts";
import { tooLarge } from "../router/_body.ts";

export interface DataPlaneOptions {
  pool: PoolManager;
  recorder: InvocationRecorder;
  logger: ConsolaInstance;
  /** Kept-alive connections to instances, shared by the data planes of a server; default: one of its own (see dispose). */
  upstream?: UpstreamPool;
  /** Request bodies declared larger than this are refused with 413 (FORGE_MAX_BODY_MB); default no limit. */
  maxBodyBytes?: number;
}

export interface InvokeOptions {
  /** Path and query the function sees. */
  path: string;
  kind?: InvocationRecord["kind"];
  /** Headers not to pass on (the control API's Authorization). */
  dropHeaders?: readonly string[];
  /**
   * An invocation rather than an HTTP request (forge invoke, async, cron): the body is a
   * payload the shim hands a Lambda handler as its event (a Workers module's `scheduled`
   * gets the cron tick). Sent on the instance's control route, with its token.
   */
  control?: "invoke" | "scheduled";
  /** The request id, from forge's own callers (async attempts); clients never choose it. */
  requestId?: string;
}

const DIGITS = /^\d{1,15}$/;

/** Bodies up to this size with a known length are read whole rather than streamed. */
const BUFFER_LIMIT = 256 * 1024;

let counter = 0;
// Unique across restarts: the process's start time and a random part, then a counter.
const prefix = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}-`;

/**
 * A new request id. Always forge's own, never a client's x-forge-request-id: the id keys
 * the invocation record and is the function's awsRequestId, which Lambda code takes to be
 * unique (idempotency keys, log correlation), so two clients sending one id must not share it.
 */
export function newRequestId(): string {
  return prefix + (counter++).toString(36);
}

export function functionNotFound(name: string): ForgeError {
  return new ForgeError(ErrorCode.FunctionNotFound, 404, `function ${name} not found`, {
    hint: "deploy it with `forge deploy`, or check the name with `forge list`",
  });
}

export function functionTimedOut(name: string, timeoutMs: number, cause?: unknown): ForgeError {
  return new ForgeError(ErrorCode.FunctionTimeout, 504, `${name} did not answer within ${timeoutMs} ms`, {
    hint: "make the function faster or raise timeoutMs (forge.json or PATCH)",
    cause,
  });
}

/** The 502 of a request its instance failed; `exit`: how the instance ended, when its driver said (Lease.exited). */
export function instanceFailed(name: string, cause?: unknown, exit?: InstanceExit): ForgeError {
  if (exit?.reason === "oom") {
    return new ForgeError(ErrorCode.InstanceCrashed, 502, `the instance of ${name} went over its memory limit of ${exit.memoryMb} MiB and was stopped`, {
      hint: `give it more memory (forge.json "memoryMb", or forge deploy --memory N) or make it use less; the next request gets a fresh instance`,
      cause,
    });
  }
  return new ForgeError(ErrorCode.InstanceCrashed, 502, `the instance of ${name} failed while serving the request`, {
    hint: `see \`forge logs ${name}\`; the next request gets a fresh instance`,
    cause,
  });
}

export function badResponse(name: string, cause: unknown): ForgeError {
  const detail = cause instanceof Error && cause.cause instanceof Error ? cause.cause.message : cause instanceof Error ? cause.message : String(cause);
  return new ForgeError(ErrorCode.BadResponse, 502, `the function's answer is not valid HTTP: ${detail}`, {
    hint: `see \`forge logs ${name}\`; a runtime "docker" function's server must answer well-formed HTTP/1.1`,
    cause,
  });
}

/** Records a request that got a lease (answered, timed out or failed on its instance). */
export function recordLeased(
  recorder: InvocationRecorder,
  name: string,
  lease: Lease,
  id: string,
  createdAt: number,
  started: number,
  status: number,
  bytesOut: number,
  kind: InvocationRecord["kind"],
): void {
  if (!recorder.enabled) return;
  const durationMs = performance.now() - started;
  recorder.record({
    id,
    function: name,
    version: lease.version,
    instance: lease.instance.id,
    start: lease.start,
    kind,
    state: "done",
    status,
    attempts: 1,
    queueWaitMs: lease.queueWaitMs,
    durationMs,
    bytesIn: 0,
    bytesOut,
    payload: null,
    result: null,
    error: null,
    createdAt,
    // The end, from the monotonic duration: one clock read fewer on the request path.
    updatedAt: createdAt + Math.round(durationMs),
  });
}

/** Records a request that never got a lease (429, 503, aborted while queued). */
export function recordUnleased(
  recorder: InvocationRecorder,
  name: string,
  version: number,
  id: string,
  createdAt: number,
  started: number,
  err: unknown,
  kind: InvocationRecord["kind"],
): void {
  recorder.record({
    id,
    function: name,
    version,
    instance: null,
    start: null,
    kind,
    state: "done",
    status: isForgeError(err) ? err.status : 500,
    attempts: 1,
    queueWaitMs: performance.now() - started,
    durationMs: performance.now() - started,
    bytesIn: 0,
    bytesOut: 0,
    payload: null,
    result: null,
    error: err instanceof Error ? err.message : String(err),
    createdAt,
    updatedAt: Date.now(),
  });
}

export class DataPlane {
  private readonly deadlines = new Deadlines();
  private readonly upstream: UpstreamPool;
  private readonly ownUpstream: boolean;

  constructor(private readonly o: DataPlaneOptions) {
    this.ownUpstream = !o.upstream;
    this.upstream = o.upstream ?? new UpstreamPool({ bufferLimit: BUFFER_LIMIT });
  }

  /** Closes the connections to instances, when they are its own. */
  dispose(): void {
    if (this.ownUpstream) this.upstream.dispose();
  }

  async invoke(name: string, req: Request, options: InvokeOptions): Promise<Response> {
    const started = performance.now();
    const createdAt = Date.now();
    const requestId = options.requestId ?? newRequestId();
    // The incoming request's own headers go on (Bun's are mutable; nobody reads them after),
    // with forge's request id set at once, so an error answered above carries it too.
    const headers = req.headers;
    headers.set("x-forge-request-id", requestId);
    const pool = this.o.pool.pool(name);
    if (!pool) throw functionNotFound(name);
    // Bun's server joins repeated lines ("5, 5"): one length, or the message's end is ambiguous
    // to whoever reads it next, and bytes left on a shared instance connection are smuggling.
    const declared = headers.get("content-length");
    if (declared !== null && !DIGITS.test(declared)) {
      const e = new ForgeError(ErrorCode.BadRequest, 400, "the request's Content-Length is repeated or not a number", {
        hint: "send one Content-Length header with the body's size in bytes (RFC 9110 §8.6)",
      });
      recordUnleased(this.o.recorder, name, pool.version, requestId, createdAt, started, e, options.kind ?? "sync");
      throw e;
    }
    const max = this.o.maxBodyBytes;
    if (max !== undefined && Number(req.headers.get("content-length") ?? NaN) > max) {
      const e = tooLarge("request body", max);
      recordUnleased(this.o.recorder, name, pool.version, requestId, createdAt, started, e, options.kind ?? "sync");
      throw e;
    }
    const timeoutMs = pool.spec.timeoutMs;
    let lease: Lease;
    try {
      // The warm path first: req.signal is only touched (and allocated) when the request must wait.
      const got = pool.tryAcquire() ?? pool.acquire(req.signal);
      lease = got instanceof Promise ? await got : got;
    } catch (err) {
      recordUnleased(this.o.recorder, name, pool.version, requestId, createdAt, started, err, options.kind ?? "sync");
      throw err;
    }

    if (options.dropHeaders) for (const h of options.dropHeaders) headers.delete(h);
    const method = req.method;
    // Streamed (under the deadline, as a slow upload must be); content-length passed on when given.
    let body = method === "GET" || method === "HEAD" ? null : req.body;
    // A body of no declared length (chunked) is counted as it goes: past the limit, a 413.
    const cap = body && max !== undefined && declared === null ? new BodyCap(max) : undefined;
    if (cap && body) body = cap.wrap(body);
    const deadline = this.deadlines.arm(timeoutMs);
    const signal = deadline;
    const kind = options.kind ?? "sync";

    const socketPath = lease.instance.endpoint.socketPath;
    let path = options.path;
    if (options.control) {
      path = (options.control === "invoke" ? CONTROL_INVOKE : CONTROL_SCHEDULED) + (path.startsWith("/") ? path : "/" + path);
      headers.set(CONTROL_HEADER, lease.instance.controlToken);
    } else if (headers.has(CONTROL_HEADER)) {
      headers.delete(CONTROL_HEADER); // a client's guess never reaches the shim's control routes
    }
    let upstream: UpstreamReply;
    try {
      upstream = await this.upstream.send(socketPath, { method, path, headers, body, signal });
    } catch (err) {
      deadline.done();
      const timedOut = signal.aborted;
      if (cap?.over) {
        // The client's body, not the instance, is what failed.
        lease.release();
        this.upstream.closeAll(socketPath);
        const e = tooLarge("request body", cap.max);
        recordLeased(this.o.recorder, name, lease, requestId, createdAt, started, e.status, 0, kind);
        throw e;
      }
      // A malformed answer is the function's doing, not a crash: the instance is not suspected.
      const malformed = isForgeError(err) && err.code === ErrorCode.BadResponse;
      if (timedOut || malformed) lease.release();
      else {
        lease.fail();
        this.upstream.closeAll(socketPath);
      }
      const e = timedOut ? functionTimedOut(name, timeoutMs, err) : malformed ? badResponse(name, err) : instanceFailed(name, err, await lease.exited());
      recordLeased(this.o.recorder, name, lease, requestId, createdAt, started, e.status, 0, kind);
      throw e;
    }

    const out = upstream.headers; // the reply's headers are ours to change: no copy
    out.set("x-forge-request-id", requestId);
    out.set("x-forge-start", lease.start);
    const status = upstream.status;
    const reply = upstream.body;
    if (!(reply instanceof ReadableStream)) {
      // A small body of known length (or none), already whole: the slot goes back at once.
      deadline.done();
      lease.release();
      recordLeased(this.o.recorder, name, lease, requestId, createdAt, started, status, reply?.byteLength ?? 0, kind);
      return new Response(reply, { status, statusText: upstream.statusText, headers: out });
    }
    const streamed = releaseOnEnd(reply, (bytes) => {
      deadline.done();
      lease.release();
      recordLeased(this.o.recorder, name, lease, requestId, createdAt, started, status, bytes, kind);
    });
    return new Response(streamed, { status, statusText: upstream.statusText, headers: out });
  }
}

/** Counts a streamed request body and errors it once it passes `max` bytes. */
class BodyCap {
  over = false;
  private seen = 0;

  constructor(readonly max: number) {}

  wrap(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
    return body.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform: (chunk, controller) => {
          this.seen += chunk.byteLength;
          if (this.seen > this.max) {
            this.over = true;
            controller.error(tooLarge("request body", this.max));
            return;
          }
          controller.enqueue(chunk);
        },
      }),
    );
  }
}

/**
 * Request timeouts on one coarse timer: AbortSignal.timeout arms a native timer per
 * request, which showed in the warm path's profile; a 50 ms sweep over the requests in
 * flight is precise enough for timeouts of 100 ms and more.
 */
class Deadlines {
  private readonly live = new Set<Deadline>();
  private timer: ReturnType<typeof setInterval> | undefined;

  arm(ms: number): Deadline {
    const entry = new Deadline(Date.now() + ms, this.live);
    this.live.add(entry);
    if (!this.timer) {
      this.timer = setInterval(() => this.sweep(), 50);
      this.timer.unref?.();
    }
    return entry;
  }

  private sweep(): void {
    if (this.live.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const now = Date.now();
    for (const e of this.live) {
      if (e.at <= now) {
        this.live.delete(e);
        e.abort(new DOMException("the function timed out", "TimeoutError"));
      }
    }
  }
}

/** A request's deadline; an Abort (not an AbortController: cheaper) the upstream pool listens to. */
class Deadline extends Abort {
  constructor(
    readonly at: number,
    private readonly live: Set<Deadline>,
  ) {
    super();
  }

  done(): void {
    this.live.delete(this);
  }
}

/** Passes a body through, calling `done` once with the byte count when it ends, fails or is cancelled. */
function releaseOnEnd(body: ReadableStream<Uint8Array> | null, done: (bytes: number) => void): ReadableStream<Uint8Array> | null {
  if (!body) {
    done(0);
    return null;
  }
  const reader = body.getReader();
  let bytes = 0;
  let finished = false;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    done(bytes);
  };
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        try {
          const r = await reader.read();
          if (r.done) {
            controller.close();
            finish();
          } else {
            bytes += r.value.byteLength;
            controller.enqueue(r.value);
          }
        } catch (err) {
          finish();
          controller.error(err);
        }
      },
      cancel(reason) {
        finish();
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
}
