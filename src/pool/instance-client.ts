/**
 * Talking to a running instance's shim over its Unix socket: health checks, waiting for
 * readiness, specialization of a stem cell, and the streaming proxy of a request.
 * Driver-agnostic: anything that exposes an Endpoint can be reached this way.
 */
import { type FSWatcher, watch } from "node:fs";
import { basename, dirname } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { UpstreamPool } from "./upstream.ts";
import {
  CONTROL_DRAIN,
  CONTROL_HEADER,
  CONTROL_HEALTH,
  CONTROL_SPECIALIZE,
  type Endpoint,
  type InstanceHandle,
  type SpecializeRequest,
} from "./driver.ts";

/** Header carrying the request id to the function (and into its log lines). */
export const REQUEST_ID_HEADER = "x-forge-request-id";

/** What the shim's health route answers. */
export interface HealthInfo {
  ok: boolean;
  specialized: boolean;
  function: string | null;
  version: number | null;
  pid: number;
  /** How the loaded module is called: Lambda handlers get one event at a time by default. */
  kind?: "fetch" | "lambda" | null;
  /** ctx.waitUntil work not settled yet. */
  pending?: number;
}

export interface WaitReadyOptions {
  /** Give up after this long. Default 10 000. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Settles when the instance's process or container has ended: no point waiting further. */
  exited?: Promise<unknown>;
}

export interface SpecializeResult {
  /** Milliseconds the shim spent writing and importing the module. */
  loadMs: number;
}

type Target = InstanceHandle | Endpoint;

function endpointOf(target: Target): Endpoint {
  return "endpoint" in target ? target.endpoint : target;
}

/** Asks the shim whether it is up; throws when it cannot be reached or answers non-2xx. */
export async function health(target: Target, token?: string, signal?: AbortSignal): Promise<HealthInfo> {
  const controlToken = token ?? ("controlToken" in target ? target.controlToken : "");
  const response = await fetch(`http://instance${CONTROL_HEALTH}`, {
    unix: endpointOf(target).socketPath,
    headers: { [CONTROL_HEADER]: controlToken },
    signal,
  });
  if (!response.ok) {
    await response.body?.cancel();
    throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `instance health check answered ${response.status}`);
  }
  // Without the right token the request reaches the function: make sure the shim answered.
  const info = (await response.json().catch(() => undefined)) as HealthInfo | undefined;
  if (info?.ok !== true) {
    throw new ForgeError(ErrorCode.InstanceStartFailed, 502, "the instance's health answer is not the shim's", {
      hint: "is the control token right?",
    });
  }
  return info;
}

/**
 * Polls health until the shim answers, backing off from 2 ms to 50 ms (a Bun process is
 * up in ~10 ms, a container in ~300 ms), racing the instance's exit and a timeout. The
 * socket's folder is watched too, so the check right after the socket appears comes at
 * once instead of at the end of a pause (measured: ~5 ms off a process start).
 */
export async function waitReady(target: Target, token: string, options: WaitReadyOptions = {}): Promise<HealthInfo> {
  const { timeoutMs = 10_000, signal, exited } = options;
  const deadline = Date.now() + timeoutMs;
  // One controller ends whichever fetch or pause is under way when the race is lost.
  const stop = new AbortController();
  let exitedEarly = false;
  const onAbort = () => stop.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });
  void exited?.then(
    () => {
      exitedEarly = true;
      stop.abort();
    },
    () => {
      exitedEarly = true;
      stop.abort();
    },
  );
  const timer = setTimeout(() => stop.abort(), timeoutMs);
  let lastError: unknown;
  const wake: Wake = { pending: false };
  let watcher: FSWatcher | undefined;
  try {
    const socketPath = endpointOf(target).socketPath;
    const name = basename(socketPath);
    watcher = watch(dirname(socketPath), (_event, file) => {
      if (file !== null && file !== name) return;
      if (wake.current) wake.current();
      else wake.pending = true; // came during a check: the next pause is skipped
    });
    watcher.on("error", () => watcher?.close());
  } catch {
    // No folder yet, or no inotify: polling alone still gets there.
  }
  try {
    // Gentle growth (x1.5): a late check costs up to a third of the time already waited.
    for (let delay = 2; ; delay = Math.min(delay * 1.5, 50)) {
      if (signal?.aborted) throw signal.reason;
      if (exitedEarly) {
        throw new ForgeError(ErrorCode.InstanceStartFailed, 502, "the instance exited before it was ready", {
          hint: "see the instance's logs for why it stopped",
          cause: lastError,
        });
      }
      if (Date.now() >= deadline || stop.signal.aborted) {
        throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `the instance was not ready within ${timeoutMs} ms`, {
          hint: "the machine may be overloaded, or the function's module takes long to load",
          cause: lastError,
        });
      }
      try {
        return await health(target, token, stop.signal);
      } catch (err) {
        lastError = err;
      }
      await pause(delay, stop.signal, wake);
    }
  } finally {
    watcher?.close();
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

interface Wake {
  /** Ends the pause under way. */
  current?: () => void;
  /** A wake-up came while no pause was under way. */
  pending: boolean;
}

/** Waits `ms`, or less when the signal aborts or the wake-up comes. */
function pause(ms: number, signal: AbortSignal, wake: Wake): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  if (wake.pending) {
    wake.pending = false;
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      wake.current = undefined;
      resolve();
    };
    wake.current = done;
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Waits until the instance's pending ctx.waitUntil work has settled, at most `maxMs` (the
 * shim bounds it too). Resolves with what is still pending; an instance that cannot be
 * reached (it crashed, or is not a shim) counts as settled.
 */
export async function drain(target: Target, maxMs: number, signal?: AbortSignal): Promise<number> {
  const token = "controlToken" in target ? target.controlToken : "";
  try {
    const response = await fetch(`http://instance${CONTROL_DRAIN}`, {
      method: "POST",
      unix: endpointOf(target).socketPath,
      headers: { [CONTROL_HEADER]: token, "x-forge-drain-ms": String(maxMs) },
      signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(maxMs + 1_000)]) : AbortSignal.timeout(maxMs + 1_000),
    });
    const body = (await response.json().catch(() => ({}))) as { pending?: unknown };
    return response.ok && typeof body.pending === "number" ? body.pending : 0;
  } catch {
    return 0;
  }
}

/**
 * Turns a generic stem cell into an instance of `request.function`. A cell is specialized
 * once. `via`: the kept-alive connections to send it on (one opened when the cell became
 * ready saves a new connection on the cell path); default a fetch of its own.
 */
export async function specialize(
  target: Target,
  token: string,
  request: SpecializeRequest,
  signal?: AbortSignal,
  via?: UpstreamPool,
): Promise<SpecializeResult> {
  let response: Response;
  const headers = { [CONTROL_HEADER]: token, "content-type": "application/json" };
  const payload = JSON.stringify(request);
  const socketPath = endpointOf(target).socketPath;
  try {
    response = via
      ? await via.request(socketPath, { method: "POST", path: CONTROL_SPECIALIZE, headers: new Headers(headers), body: new TextEncoder().encode(payload), ...(signal ? { signal } : {}) })
      : await fetch(`http://instance${CONTROL_SPECIALIZE}`, { method: "POST", unix: socketPath, headers, body: payload, signal });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw new ForgeError(ErrorCode.InstanceCrashed, 502, "the stem cell could not be reached to specialize it", {
      cause: err,
    });
  }
  const body = (await response.json().catch(() => ({}))) as {
    loadMs?: number;
    error?: { code?: string; message?: string };
  };
  if (!response.ok) {
    const reason = body.error?.message ?? `status ${response.status}`;
    throw new ForgeError(
      ErrorCode.InstanceStartFailed,
      502,
      `specializing the instance for ${request.function} v${request.version} failed: ${reason}`,
      {
        hint:
          response.status === 400
            ? "the function's module did not load; check its default export or handler"
            : "the instance was already specialized; use another stem cell",
      },
    );
  }
  return { loadMs: body.loadMs ?? 0 };
}

/**
 * Proxies `request` to the instance and returns its response, both bodies streamed.
 * Method, path, query, headers (Host included) and body pass unchanged, plus the request id.
 * Rejects with the signal's reason when aborted, else with ForgeError InstanceCrashed when
 * the instance cannot be reached or drops the connection before answering.
 */
export async function forward(
  target: Target,
  request: Request,
  requestId: string,
  signal?: AbortSignal,
): Promise<Response> {
  const url = request.url;
  // Only the path and query travel in the URL; the authority goes in the Host header, so
  // the function sees the public URL (http://greet.localhost:8080/...).
  const authorityStart = url.indexOf("//") + 2;
  const pathStart = url.indexOf("/", authorityStart);
  const path = pathStart === -1 ? "/" : url.slice(pathStart);
  // A copy, so the caller's Request keeps its headers (it may be retried or logged).
  const headers = new Headers(request.headers);
  headers.set(REQUEST_ID_HEADER, requestId);
  if (!headers.has("host")) headers.set("host", url.slice(authorityStart, pathStart === -1 ? undefined : pathStart));
  try {
    return await fetch(`http://instance${path}`, {
      method: request.method,
      headers,
      body: request.body,
      duplex: "half",
      redirect: "manual",
      // A proxy passes content-encoding through untouched.
      decompress: false,
      unix: endpointOf(target).socketPath,
      signal,
    });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw new ForgeError(ErrorCode.InstanceCrashed, 502, "the function's instance did not answer", {
      hint: "it may have crashed; see forge logs for its last lines",
      cause: err,
    });
  }
}
