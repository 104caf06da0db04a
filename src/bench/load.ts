/**
 * A closed-loop load generator: `concurrency` workers, each with its own kept-alive
 * connection, each sending its next request as soon as the previous response has fully
 * arrived, for a number of requests or a duration. Latency goes into an HDR-style
 * histogram; errors are counted by status (responses >= 400) and by kind (connect,
 * timeout, reset, protocol) for requests that got no response.
 */
import { Histogram, type HistogramData, type HistogramOptions } from "./histogram.ts";
import { describe, encodeRequest, Http1Connection, TransportError, type ErrorKind, type ResponseListener, type Target } from "./_http1.ts";

export type { ErrorKind } from "./_http1.ts";

export interface LoadOptions {
  /** What to request: http(s) URL; its path and query are sent, its host is the default Host. */
  url: string;
  /** Connect to this Unix socket instead of the URL's host and port. */
  unix?: string;
  /** Default GET. */
  method?: string;
  /** Extra request headers; `host` overrides the URL's (how a function is reached by subdomain). */
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** Workers, each with one connection. Default 64. */
  concurrency?: number;
  /** Stop after this many requests in all. */
  requests?: number;
  /** Stop issuing requests after this long; default 10 000 when `requests` is not given. */
  durationMs?: number;
  /** A request (or a connect) taking longer fails as "timeout". Default 30 000. */
  timeoutMs?: number;
  /** Stops the run early; requests in flight finish. */
  signal?: AbortSignal;
  /**
   * Load the target this long first, on the same connections, without counting it. Default 0.
   * What it warms: the JIT of a target written in JavaScript (forge's gateway, a Bun
   * instance), of the generator itself (a fresh worker thread starts cold), and connections.
   */
  warmupMs?: number;
  /** Called every `progressEveryMs` with the figures so far. */
  onProgress?: (progress: LoadProgress) => void;
  /** Default 250. */
  progressEveryMs?: number;
  /** Where to draw a live progress line (only when it is a TTY), e.g. process.stderr. */
  progressTo?: ProgressStream;
  histogram?: HistogramOptions;
}

export interface ProgressStream {
  isTTY?: boolean;
  write(text: string): unknown;
}

export interface LoadProgress {
  elapsedMs: number;
  completed: number;
  errors: number;
  rps: number;
  p50Us: number;
  p99Us: number;
}

export interface LoadErrors {
  total: number;
  /** Responses with status >= 400, by status. */
  byStatus: Record<string, number>;
  /** Requests that got no response, by kind. */
  byKind: Record<ErrorKind, number>;
  /** The first message of each kind, to say what went wrong. */
  samples: Partial<Record<ErrorKind, string>>;
}

export interface LoadResult {
  /** Requests finished, answered or failed. */
  requests: number;
  /** Responses below 400. */
  ok: number;
  durationMs: number;
  /** Responses (any status) per second. */
  rps: number;
  /** Latency of every response (any status), microseconds, from the first byte sent to the last received. */
  latency: Histogram;
  /** Responses by status. */
  statuses: Record<string, number>;
  errors: LoadErrors;
  /** Connections opened: equal to the concurrency when every one was kept alive. */
  connections: number;
  concurrency: number;
  /** CPU time of the generator's thread over the run, microseconds: near durationMs * 1000, it was the bottleneck. */
  cpuUs: number;
  /** Responses to the warm-up's requests (not counted anywhere else). */
  warmupRequests: number;
}

const DEFAULT_DURATION_MS = 10_000;

/** Runs a load; resolves when every worker has stopped. */
export async function runLoad(options: LoadOptions): Promise<LoadResult> {
  const concurrency = options.concurrency ?? 64;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new RangeError(`concurrency must be a whole number >= 1, got ${concurrency}`);
  if (options.requests !== undefined && (!Number.isInteger(options.requests) || options.requests < 1)) throw new RangeError(`requests must be a whole number >= 1, got ${options.requests}`);
  const timeoutMs = options.timeoutMs ?? 30_000;
  const warmupMs = options.warmupMs ?? 0;
  if (!(warmupMs >= 0)) throw new RangeError(`warmupMs must be >= 0, got ${warmupMs}`);
  const url = new URL(options.url);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new RangeError(`only http and https URLs can be loaded, got ${url.protocol}`);
  const target: Target = options.unix
    ? { unix: options.unix }
    : { hostname: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || (url.protocol === "https:" ? 443 : 80)), tls: url.protocol === "https:" };
  const method = (options.method ?? "GET").toUpperCase();
  const headers: Record<string, string> = { host: url.host, "user-agent": "forge-bench", accept: "*/*" };
  for (const [name, value] of Object.entries(options.headers ?? {})) headers[name.toLowerCase()] = value;
  const body = typeof options.body === "string" ? new TextEncoder().encode(options.body) : options.body;
  const request = encodeRequest(method, url.pathname + url.search, headers, body);
  const isHead = method === "HEAD";

  const latency = new Histogram(options.histogram);
  const statuses: Record<string, number> = {};
  const errors: LoadErrors = { total: 0, byStatus: {}, byKind: { connect: 0, timeout: 0, reset: 0, protocol: 0 }, samples: {} };
  let completed = 0;
  let ok = 0;
  let issued = 0;
  let connections = 0;
  let warmupRequests = 0;
  const limit = options.requests ?? Number.POSITIVE_INFINITY;
  // Requests sent before `started` (the warm-up) are not counted; the run is timed from it.
  let started = performance.now() + warmupMs;
  let measuring = warmupMs === 0;
  let cpuAtStart = process.threadCpuUsage();
  const runMs = options.durationMs ?? (options.requests === undefined ? DEFAULT_DURATION_MS : Number.POSITIVE_INFINITY);
  const stopped = (now: number): boolean => issued >= limit || now >= started + runMs || options.signal?.aborted === true;

  const countError = (kind: ErrorKind, message: string): void => {
    completed++;
    errors.total++;
    errors.byKind[kind]++;
    errors.samples[kind] ??= message;
  };

  // One watchdog for all workers (cheaper than a timer or a promise race per request):
  // it fails connections whose request, or connect, is older than the timeout.
  const live = new Set<Http1Connection>();
  const connecting = new Set<{ since: number; abort(): void }>();
  const watchdog = setInterval(
    () => {
      const nowNs = Bun.nanoseconds();
      for (const c of live) {
        if (c.sentAtNs !== 0 && nowNs - c.sentAtNs > timeoutMs * 1e6) c.destroy(new TransportError("timeout", `no complete response within ${timeoutMs} ms`));
      }
      const now = performance.now();
      for (const op of connecting) if (now - op.since > timeoutMs) op.abort();
    },
    Math.max(5, Math.min(250, timeoutMs / 4)),
  );

  /** Opens a connection, failing with "timeout" past timeoutMs (a late one is closed). */
  const open = (): Promise<Http1Connection> =>
    new Promise<Http1Connection>((resolve, reject) => {
      const opening = Http1Connection.open(target);
      const op = {
        since: performance.now(),
        abort: () => {
          connecting.delete(op);
          void opening.then((c) => c.destroy(), () => {});
          reject(new TransportError("timeout", `no connection within ${timeoutMs} ms`));
        },
      };
      connecting.add(op);
      opening.then(
        (c) => {
          connecting.delete(op);
          resolve(c);
        },
        (err: unknown) => {
          connecting.delete(op);
          reject(err);
        },
      );
    });

  const turn = new TurnBatch();
  /** One worker: a request at a time on its own connection, the next one sent at the end of the turn its response came in. */
  const worker = (): Promise<void> =>
    new Promise<void>((finished) => {
      let conn: Http1Connection | undefined;
      /** Is the request in flight counted (sent after the warm-up)? */
      let counted = false;
      const drop = (): void => {
        if (!conn) return;
        conn.destroy();
        live.delete(conn);
        conn = undefined;
      };
      const next = (): void => {
        const now = performance.now();
        if (!measuring && now >= started) {
          measuring = true;
          started = now;
          cpuAtStart = process.threadCpuUsage();
        }
        if (stopped(now)) {
          drop();
          finished();
          return;
        }
        counted = measuring;
        if (counted) issued++;
        if (conn?.reusable) {
          conn.send(request, isHead, listener);
          return;
        }
        drop();
        open().then(
          (c) => {
            conn = c;
            live.add(c);
            connections++;
            c.send(request, isHead, listener);
          },
          (err: unknown) => listener.onError(err instanceof TransportError ? err : new TransportError("connect", describe(err))),
        );
      };
      const listener: ResponseListener = {
        onResponse(status, latencyNs) {
          if (counted) {
            latency.record(latencyNs / 1000);
            completed++;
            statuses[status] = (statuses[status] ?? 0) + 1;
            if (status >= 400) {
              errors.total++;
              errors.byStatus[status] = (errors.byStatus[status] ?? 0) + 1;
            } else ok++;
          } else warmupRequests++;
          turn.add(next);
        },
        onError(err) {
          drop();
          if (counted) countError(err.kind, err.message);
          turn.add(next);
        },
      };
      next();
    });

  const progressEvery = options.progressEveryMs ?? 250;
  const line = options.progressTo?.isTTY ? options.progressTo : undefined;
  const snapshot = (): LoadProgress => {
    const elapsedMs = Math.max(0, performance.now() - started);
    return { elapsedMs, completed, errors: errors.total, rps: elapsedMs > 0 ? (completed / elapsedMs) * 1000 : 0, p50Us: latency.percentile(50), p99Us: latency.percentile(99) };
  };
  const ticker =
    options.onProgress || line
      ? setInterval(() => {
          if (!measuring) return; // nothing to say during the warm-up
          const p = snapshot();
          options.onProgress?.(p);
          line?.write(`\r\x1b[2K${formatProgress(p)}`);
        }, progressEvery)
      : undefined;

  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    clearInterval(watchdog);
    if (ticker) clearInterval(ticker);
    line?.write("\r\x1b[2K");
  }
  const durationMs = Math.max(0, performance.now() - started);
  const cpu = process.threadCpuUsage(cpuAtStart);
  return {
    requests: completed,
    ok,
    durationMs,
    rps: durationMs > 0 ? (latency.count / durationMs) * 1000 : 0,
    latency,
    statuses,
    errors,
    connections,
    concurrency,
    cpuUs: cpu.user + cpu.system,
    warmupRequests,
  };
}

/**
 * Runs functions at the end of the current turn of the event loop, once every socket that
 * was ready in it has been read: a worker whose response arrived sends its next request
 * there, so the requests of one turn leave together, as wrk's do (it reads every ready
 * response, then writes every next request on its next wake-up). Sending each request the
 * moment its response was read, between the reads of the others, spread them out: the proxy
 * measured then woke for about one request at a time (nginx: 1.1 requests per epoll_wait
 * against 5.3 under wrk, counted with strace) and spent more CPU on each (in the same runs,
 * nginx's worker 35-45 us a request against 32-36 us under wrk, forge 46-52 us against 38-48).
 */
class TurnBatch {
  private due: (() => void)[] = [];
  private readonly flush = (): void => {
    const due = this.due;
    this.due = [];
    for (const run of due) run();
  };

  add(run: () => void): void {
    if (this.due.push(run) === 1) setImmediate(this.flush);
  }
}

/** One line of progress: elapsed, requests, rate, p50/p99, errors. */
export function formatProgress(p: LoadProgress): string {
  return `  ${(p.elapsedMs / 1000).toFixed(1)}s  ${p.completed.toLocaleString("en-US")} req  ${Math.round(p.rps).toLocaleString("en-US")} req/s  p50 ${formatUs(p.p50Us)}  p99 ${formatUs(p.p99Us)}  errors ${p.errors}`;
}

/** Microseconds as a short human figure: 850us, 1.24ms, 3.2s. */
export function formatUs(us: number): string {
  if (us < 1000) return `${Math.round(us)}us`;
  if (us < 10_000) return `${(us / 1000).toFixed(2)}ms`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(1)}ms`;
  return `${(us / 1_000_000).toFixed(2)}s`;
}

/** What can cross to a worker thread: the options without callbacks or signals. */
export type PlainLoadOptions = Omit<LoadOptions, "signal" | "onProgress" | "progressTo">;

/** A LoadResult as plain data (the histogram as HistogramData). */
export type PlainLoadResult = Omit<LoadResult, "latency"> & { latency: HistogramData };

export type WorkerRequest = { type: "run"; options: PlainLoadOptions } | { type: "stop" };
export type WorkerReply = { type: "progress"; progress: LoadProgress } | { type: "done"; result: PlainLoadResult } | { type: "error"; message: string };

/**
 * Runs a load on its own thread. Use it when the thing measured lives in this process
 * (an in-process forge): the generator then does not share an event loop with it.
 */
export function runLoadInWorker(options: LoadOptions): Promise<LoadResult> {
  const { signal, onProgress, progressTo, ...plain } = options;
  const line = progressTo?.isTTY ? progressTo : undefined;
  const worker = new Worker(new URL("./_load-worker.ts", import.meta.url).href);
  return new Promise<LoadResult>((resolve, reject) => {
    const stop = (): void => worker.postMessage({ type: "stop" } satisfies WorkerRequest);
    const finish = (): void => {
      signal?.removeEventListener("abort", stop);
      line?.write("\r\x1b[2K");
      worker.terminate();
    };
    worker.onmessage = (event: MessageEvent<WorkerReply>) => {
      const msg = event.data;
      if (msg.type === "progress") {
        onProgress?.(msg.progress);
        line?.write(`\r\x1b[2K${formatProgress(msg.progress)}`);
      } else if (msg.type === "done") {
        finish();
        resolve({ ...msg.result, latency: Histogram.fromJSON(msg.result.latency) });
      } else {
        finish();
        reject(new Error(msg.message));
      }
    };
    worker.onerror = (event) => {
      finish();
      reject(new Error(`the load worker failed: ${event.message}`));
    };
    signal?.addEventListener("abort", stop, { once: true });
    const wantsProgress = onProgress !== undefined || line !== undefined;
    worker.postMessage({ type: "run", options: { ...plain, ...(wantsProgress ? {} : { progressEveryMs: 0 }) } } satisfies WorkerRequest);
    if (signal?.aborted) stop();
  });
}
