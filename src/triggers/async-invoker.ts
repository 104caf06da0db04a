/**
 * Async invocations: POST .../invoke?async=1 stores a record (state queued) and puts a job
 * on the function's queue; consumers (bounded concurrency per function) send it through the
 * same invoke path as HTTP requests. 5xx, 429, 408 and timeouts are retried with exponential
 * backoff and jitter (the queue's retry policy) up to `maxAttempts` in all; then the
 * invocation is `dead` and listed in the function's dead letters. Other 4xx answers are
 * dead at once: the same payload would be refused again (as Knative's delivery does).
 *
 * Jobs carry everything needed to run them, so a node whose store lacks the record (or a
 * restarted one) can still run a job it takes from a shared Redis stream.
 */
import { randomBytes } from "node:crypto";
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError, guardRepo, isForgeError } from "../errors.ts";
import { PermanentError, type Consumer, type HandlerContext, type Queue, type QueueMessage } from "../provision/index.ts";
import type { AsyncInvocationRepo, InvocationRecord } from "../store/index.ts";
import type { InvokeFn } from "./scheduler.ts";

/** What travels on the queue. */
export interface AsyncJob {
  id: string;
  function: string;
  /** Path and query the function sees. */
  path: string;
  contentType: string | null;
  /** The request body, base64. */
  body: string;
  createdAt: number;
}

export type AsyncState = "queued" | "running" | "succeeded" | "dead";

/** GET /v1/invocations/:id */
export interface InvocationView {
  id: string;
  function: string;
  kind: InvocationRecord["kind"];
  status: InvocationRecord["state"];
  attempts: number;
  createdAt: number;
  updatedAt: number;
  /** When the last attempt started, for async invocations that ran. */
  startedAt: number | null;
  /** When it reached succeeded or dead. */
  finishedAt: number | null;
  result: AsyncResult | null;
  error: string | null;
}

export interface AsyncResult {
  status: number;
  headers: Record<string, string>;
  /** utf8 text, or base64 when the body is not valid UTF-8. */
  body: string;
  encoding: "utf8" | "base64";
  /** True when the body was longer than the cap and was cut. */
  truncated: boolean;
  durationMs: number;
}

export interface DeadLetterView {
  id: string;
  attempts: number;
  error: string | null;
  createdAt: number;
  failedAt: number;
  /** The request body (utf8 text or base64, as `encoding` says). */
  payload: string;
  encoding: "utf8" | "base64";
  contentType: string | null;
}

export interface AsyncInvokerOptions {
  invocations: AsyncInvocationRepo;
  invoke: InvokeFn;
  logger: ConsolaInstance;
  /** The queue of one function (memory or Redis Streams), made once per function and closed by the invoker. */
  queueFor: (fn: string) => Queue<AsyncJob>;
  /** Functions to consume for at start and on each sync (the store's, so other nodes' jobs are taken too). */
  functions: () => string[] | Promise<string[]>;
  /** Attempts in all, first included. Default 3. */
  maxAttempts?: number;
  /** Jobs of one function run at once on this node. Default 4. */
  concurrency?: number;
  /** Bytes of a response body kept in the record. Default 64 KiB. */
  resultCapBytes?: number;
  /** How often a running job's visibility is extended, ms. Default 5000. */
  heartbeatEveryMs?: number;
  /**
   * Re-enqueue records left queued or running by a crash at start. For the memory queue,
   * whose jobs die with the process; a Redis stream keeps its own. Default false.
   */
  recoverFromStore?: boolean;
  /** How often the function list is re-read to start consumers for new functions, ms; 0 = never. Default 10000. */
  syncEveryMs?: number;
}

/** 202 answer of an async invoke. */
export interface Accepted {
  id: string;
  status: "queued";
}

export class AsyncInvoker implements AsyncDisposable {
  private readonly queues = new Map<string, { queue: Queue<AsyncJob>; consumer: Consumer }>();
  private readonly logger: ConsolaInstance;
  private readonly maxAttempts: number;
  private syncTimer: ReturnType<typeof setInterval> | undefined;
  private closed = false;
  /** The repository, its failures turned into 503 store_unavailable. */
  private readonly invocations: AsyncInvocationRepo;

  constructor(private readonly o: AsyncInvokerOptions) {
    this.logger = o.logger.withTag("async");
    this.maxAttempts = o.maxAttempts ?? 3;
    this.invocations = guardRepo(o.invocations);
  }

  /** Starts consumers for every known function; in memory mode re-enqueues what a crash left behind. */
  async start(): Promise<void> {
    await this.sync();
    if (this.o.recoverFromStore) await this.recover();
    const every = this.o.syncEveryMs ?? 10_000;
    if (every > 0) {
      this.syncTimer = setInterval(() => void this.sync(), every);
      this.syncTimer.unref?.();
    }
  }

  /** Records and queues an invocation; resolves once the queue holds it. */
  async submit(fn: string, request: { body: Uint8Array; contentType: string | null; path: string }): Promise<Accepted> {
    const shuttingDown = (): ForgeError => new ForgeError(ErrorCode.Disposed, 503, "forge is shutting down", { hint: "retry against a running forge" });
    if (this.closed) throw shuttingDown();
    const now = Date.now();
    const job: AsyncJob = {
      id: `inv-${randomBytes(10).toString("hex")}`,
      function: fn,
      path: request.path,
      contentType: request.contentType,
      body: Buffer.from(request.body).toString("base64"),
      createdAt: now,
    };
    await this.invocations.insert(newRecord(job, request.body.byteLength));
    // Closed while the record was written: no consumer may start now (the record stays queued; memory mode re-queues it at the next start).
    if (this.closed) throw shuttingDown();
    try {
      await this.ensure(fn).queue.enqueue(job);
    } catch (err) {
      await this.invocations
        .update(job.id, { state: "dead", error: `could not be queued: ${errorText(err)}` })
        .catch((e: unknown) => this.logger.warn(`could not mark ${job.id} dead:`, e));
      throw new ForgeError(ErrorCode.Internal, 503, "the async queue did not accept the invocation", {
        hint: "check that Redis (FORGE_REDIS_URL) answers; the server log has the cause",
        cause: err,
      });
    }
    return { id: job.id, status: "queued" };
  }

  async get(id: string): Promise<InvocationView> {
    const r = await this.invocations.get(id);
    if (!r) {
      throw new ForgeError(ErrorCode.NotFound, 404, `invocation ${id.slice(0, 80)} not found`, {
        hint: "use the id that `forge invoke --async` printed; records of deleted functions are gone",
      });
    }
    const terminal = r.state === "succeeded" || r.state === "dead" || r.state === "failed" || r.state === "done";
    const result = parseJson<AsyncResult>(r.result);
    return {
      id: r.id,
      function: r.function,
      kind: r.kind,
      status: r.state,
      attempts: r.attempts,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
      // A running record was last touched when its attempt started; a finished one knows its duration.
      startedAt: r.state === "running" ? r.updatedAt : r.durationMs !== null ? Math.round(r.updatedAt - r.durationMs) : null,
      finishedAt: terminal ? r.updatedAt : null,
      result,
      error: r.error,
    };
  }

  /** The function's dead invocations, newest first. */
  async deadLetters(fn: string, limit = 100): Promise<DeadLetterView[]> {
    return (await this.invocations.list(fn, { kind: "async", state: "dead", limit })).map((r) => {
      const p = parseJson<StoredPayload>(r.payload);
      const bytes = Buffer.from(p?.body ?? "", "base64");
      const text = utf8(bytes);
      return {
        id: r.id,
        attempts: r.attempts,
        error: r.error,
        createdAt: r.createdAt,
        failedAt: r.updatedAt,
        payload: text ?? bytes.toString("base64"),
        encoding: text === undefined ? "base64" : "utf8",
        contentType: p?.contentType ?? null,
      };
    });
  }

  /** Jobs waiting or running for a function on its queue (metrics, tests). */
  async depth(fn: string): Promise<number> {
    return (await this.queues.get(fn)?.queue.depth()) ?? 0;
  }

  /** Starts consumers for functions this node has not seen yet; never rejects (a failure is logged). */
  async sync(): Promise<void> {
    if (this.closed) return;
    try {
      const fns = await this.o.functions();
      if (this.closed) return;
      for (const fn of fns) this.ensure(fn);
    } catch (err) {
      this.logger.warn("could not list functions for async consumers:", err);
    }
  }

  /** Stops consuming a deleted function's queue. */
  async forget(fn: string): Promise<void> {
    const q = this.queues.get(fn);
    if (!q) return;
    this.queues.delete(fn);
    await q.consumer.close();
    await q.queue.close();
  }

  /** Stops taking jobs and waits for the ones in hand. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.syncTimer) clearInterval(this.syncTimer);
    await Promise.allSettled([...this.queues.keys()].map((fn) => this.forget(fn)));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internal ---

  private ensure(fn: string): { queue: Queue<AsyncJob>; consumer: Consumer } {
    const existing = this.queues.get(fn);
    if (existing) return existing;
    const queue = this.o.queueFor(fn);
    const consumer = queue.consume((msg, ctx) => this.handle(msg, ctx), {
      concurrency: this.o.concurrency ?? 4,
      // The queue may dead-letter on its own (its consumers kept dying past the visibility timeout).
      onDeadLetter: async (letter) => {
        const r = await this.invocations.get(letter.body.id);
        if (r && r.state !== "dead" && r.state !== "succeeded") await this.invocations.update(r.id, { state: "dead", error: r.error ?? letter.reason });
      },
    });
    const entry = { queue, consumer };
    this.queues.set(fn, entry);
    return entry;
  }

  private async handle(msg: QueueMessage<AsyncJob>, ctx: HandlerContext): Promise<void> {
    const job = msg.body;
    let record = await this.invocations.get(job.id);
    if (!record) {
      // Taken from a shared stream by a node whose store never saw the submit.
      record = newRecord(job, Buffer.byteLength(job.body, "base64"));
      await this.invocations.insert(record);
    }
    if (record.state === "succeeded" || record.state === "dead") return; // redelivered after it finished
    // After a crash the queue may count from 1 again; the record knows how many attempts were made.
    const attempt = Math.max(msg.attempt, record.attempts + 1);
    const startedAt = Date.now();
    await this.invocations.update(job.id, {
      state: "running",
      attempts: attempt,
      ...(record.queueWaitMs === null ? { queueWaitMs: startedAt - job.createdAt } : {}),
    });

    const beat = setInterval(() => {
      ctx.heartbeat().catch((err: unknown) => this.logger.debug(`heartbeat of ${job.id} failed:`, err));
    }, this.o.heartbeatEveryMs ?? 5000);
    beat.unref?.();
    let outcome: Outcome;
    try {
      outcome = await this.attempt(job, attempt);
    } finally {
      clearInterval(beat);
    }

    const durationMs = Date.now() - startedAt;
    const result = outcome.result ? JSON.stringify({ ...outcome.result, durationMs }) : null;
    const status = outcome.result?.status ?? outcome.status;
    if (outcome.kind === "ok") {
      await this.invocations.update(job.id, { state: "succeeded", status, durationMs, result, error: null, bytesOut: outcome.bytesOut });
      return;
    }
    const error = `attempt ${attempt}: ${outcome.error}`;
    const last = outcome.kind === "permanent" || attempt >= this.maxAttempts;
    await this.invocations.update(job.id, { state: last ? "dead" : "queued", status, durationMs, result, error });
    if (last) {
      this.logger.warn(`async ${job.id} of ${job.function} is dead after ${attempt} attempt(s): ${outcome.error}`);
      throw new PermanentError(error);
    }
    throw new Error(error);
  }

  private async attempt(job: AsyncJob, attempt: number): Promise<Outcome> {
    const headers: Record<string, string> = {
      "x-forge-request-id": `${job.id}-${attempt}-${randomBytes(3).toString("hex")}`,
      "x-forge-async-id": job.id,
      "x-forge-attempt": String(attempt),
      "user-agent": "forge-async",
    };
    if (job.contentType) headers["content-type"] = job.contentType;
    const body = Buffer.from(job.body, "base64");
    const req = new Request(`http://forge${job.path.startsWith("/") ? job.path : "/" + job.path}`, { method: "POST", headers, body });
    let res: Response;
    try {
      res = await this.o.invoke(job.function, req, "async");
    } catch (err) {
      const status = isForgeError(err) ? err.status : 500;
      return { kind: retryable(status) ? "retry" : "permanent", status, error: errorText(err), result: null, bytesOut: 0 };
    }
    const { result, bytesOut } = await capture(res, this.o.resultCapBytes ?? 64 * 1024);
    const base = { status: res.status, result, bytesOut };
    if (res.status < 400) return { kind: "ok", ...base, error: "" };
    return { kind: retryable(res.status) ? "retry" : "permanent", ...base, error: `the function answered ${res.status}` };
  }

  private async recover(): Promise<void> {
    // Snapshot first: a job re-queued here may be running (and listed as such) before the next query.
    const left: InvocationRecord[] = [];
    for (const fn of await this.o.functions()) {
      for (const state of ["queued", "running"] as const) left.push(...(await this.invocations.list(fn, { kind: "async", state, limit: 10_000 })));
    }
    let n = 0;
    for (const r of left) {
      const p = parseJson<StoredPayload>(r.payload);
      if (!p) continue;
      await this.ensure(r.function).queue.enqueue({ id: r.id, function: r.function, path: p.path, contentType: p.contentType, body: p.body, createdAt: r.createdAt });
      n++;
    }
    if (n > 0) this.logger.info(`re-queued ${n} async invocation(s) left by the last run`);
  }
}

// --- internal ---

interface Outcome {
  kind: "ok" | "retry" | "permanent";
  status: number;
  error: string;
  result: Omit<AsyncResult, "durationMs"> | null;
  bytesOut: number;
}

/** The record's payload column: what is needed to run the job again. */
interface StoredPayload {
  path: string;
  contentType: string | null;
  body: string;
}

/** 5xx (crash 502, saturation 503, timeout 504), 429 and 408 are worth another try. */
function retryable(status: number): boolean {
  return status >= 500 || status === 429 || status === 408;
}

function newRecord(job: AsyncJob, bytesIn: number): InvocationRecord {
  const payload: StoredPayload = { path: job.path, contentType: job.contentType, body: job.body };
  return {
    id: job.id,
    function: job.function,
    version: 0,
    instance: null,
    start: null,
    kind: "async",
    state: "queued",
    status: null,
    attempts: 0,
    queueWaitMs: null,
    durationMs: null,
    bytesIn,
    bytesOut: 0,
    payload: JSON.stringify(payload),
    result: null,
    error: null,
    createdAt: job.createdAt,
    updatedAt: job.createdAt,
  };
}

/** Reads up to `cap` bytes of the body and cancels the rest (which gives the instance back). */
async function capture(res: Response, cap: number): Promise<{ result: Omit<AsyncResult, "durationMs">; bytesOut: number }> {
  const chunks: Uint8Array[] = [];
  let kept = 0;
  let truncated = false;
  if (res.body) {
    const reader = res.body.getReader();
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      const room = cap - kept;
      if (r.value.byteLength > room) {
        if (room > 0) chunks.push(r.value.subarray(0, room));
        kept = cap;
        truncated = true;
        await reader.cancel();
        break;
      }
      chunks.push(r.value);
      kept += r.value.byteLength;
    }
  }
  const bytes = Buffer.concat(chunks);
  const text = truncated ? utf8(trimPartialUtf8(bytes)) : utf8(bytes);
  const headers: Record<string, string> = {};
  res.headers.forEach((v, k) => (headers[k] = v));
  return {
    result: { status: res.status, headers, body: text ?? bytes.toString("base64"), encoding: text === undefined ? "base64" : "utf8", truncated },
    bytesOut: kept,
  };
}

const decoder = new TextDecoder("utf-8", { fatal: true });

function utf8(bytes: Uint8Array): string | undefined {
  try {
    return decoder.decode(bytes);
  } catch {
    return undefined;
  }
}

/** A cut may split a multi-byte character; drop its leading bytes so the text stays valid. */
function trimPartialUtf8(bytes: Buffer): Buffer {
  let end = bytes.length;
  for (let i = 1; i <= 3 && end - i >= 0; i++) {
    const b = bytes[end - i] ?? 0;
    if ((b & 0xc0) === 0x80) continue; // continuation byte
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
    if ((b & 0xc0) === 0xc0 && need > i) end -= i; // lead byte of an incomplete sequence
    break;
  }
  return bytes.subarray(0, end);
}

function parseJson<T>(text: string | null): T | null {
  if (text === null) return null;
  try {
    return JSON.parse(text) as T;
  } catch {
    return null;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
