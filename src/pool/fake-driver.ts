/**
 * The fake driver: in-process instances, each a Bun.serve on a Unix socket in a temp dir
 * answering the shim's control routes. For the pool's decision tests (timing is in the
 * test's hands: starts can be held, instances crashed) and the driver contract suite. It
 * runs no function code: answers come from `handler`.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { ErrorCode, ForgeError } from "../errors.ts";
import { ARTIFACT_COPY, copyArtifact } from "./_artifact-copy.ts";
import { InstanceLog } from "./_log-parse.ts";
import {
  BUNDLE_FILE,
  CONTROL_HEADER,
  CONTROL_HEALTH,
  CONTROL_SPECIALIZE,
  type Driver,
  type ExitInfo,
  type InstanceHandle,
  type InstanceSpec,
  type ListedInstance,
  type LogLine,
  type LogOptions,
  type SpecializeRequest,
} from "./driver.ts";
import { REQUEST_ID_HEADER } from "./instance-client.ts";

/** What a handler can do besides answering: what a function could do inside an instance. */
export interface FakeContext {
  /** The id of the instance answering. */
  readonly instance: string;
  /** The request id forge sent (`x-forge-request-id`), when it sent one. */
  readonly requestId: string | undefined;
  /** Writes a log line of this instance, tagged with the request id. */
  log(text: string, stream?: LogLine["stream"]): void;
  /** Ends the instance as if its process exited with `code` (after this response is sent). */
  exit(code?: number): void;
  /** Grows the instance's resident memory (what memoryUsage reports) by `bytes`, as a function allocating would. */
  allocate(bytes: number): void;
}

export type FakeHandler = (request: Request, spec: InstanceSpec, ctx: FakeContext) => Response | Promise<Response>;

export interface FakeDriverOptions {
  /** Delay of every start: milliseconds, or a function whose promise holds the start (tests resolve it). Default 0. */
  startDelayMs?: number | ((spec: InstanceSpec) => Promise<void>);
  /** Answers function requests; `spec` is the effective one (after specialization). Default: JSON {instance, function, version}. */
  handler?: FakeHandler;
  /** How the fake module is called, as the shim's health answers it. Default "fetch". */
  kindOf?: (spec: InstanceSpec) => "fetch" | "lambda";
  /** Makes a start fail with InstanceStartFailed when it returns true. Default: never. */
  failStart?: (spec: InstanceSpec) => boolean;
}

/** A specialization the fake received. */
export interface FakeSpecialization extends SpecializeRequest {
  at: number;
}

export interface FakeDriver extends Driver {
  readonly name: "fake";
  /** Starts that succeeded. */
  readonly started: number;
  /** Instances stopped through stop() (each counted once). */
  readonly stopped: number;
  /** Ids of instances that are up (started, not stopped, not crashed). */
  live(): string[];
  /** Simulates an instance dying on its own: its server stops and onExit fires (with `reason`, default by the code). */
  crash(id: string, code?: number, reason?: string): Promise<void>;
  /** Simulates an instance that is broken but has not exited: its server stops answering, no exit is reported. */
  hang(id: string): Promise<void>;
  /** What was sent to an instance's specialize route, if anything. */
  specialization(id: string): FakeSpecialization | undefined;
  /** The last memory limit set through setMemory, if any. */
  memoryOf(id: string): number | undefined;
  /** The handle of an instance that exists. */
  handle(id: string): InstanceHandle | undefined;
  memoryUsage(): Promise<Map<string, number>>;
  /** Sets what memoryUsage reports for a live instance or cell (each starts at FAKE_RESIDENT_BYTES). */
  setMemoryUsage(id: string, bytes: number): void;
}

/** What memoryUsage reports for a fake instance until a test sets it: about an idle bun's own pages. */
export const FAKE_RESIDENT_BYTES = 30 * 1024 * 1024;

interface FakeInstance {
  handle: InstanceHandle;
  /** Effective spec: the cell's spec with function, version and env of its specialization. */
  spec: InstanceSpec;
  dir: string;
  /** Absent only while the instance is being built. */
  server?: Server<undefined>;
  log: InstanceLog;
  running: boolean;
  specialization: FakeSpecialization | undefined;
  memoryMb: number | undefined;
  /** What memoryUsage reports, bytes. */
  resident: number;
}

const defaultHandler: FakeHandler = (_request, spec, ctx) =>
  Response.json({ instance: ctx.instance, function: spec.function ?? null, version: spec.version ?? null });

export function createFakeDriver(options: FakeDriverOptions = {}): FakeDriver {
  const opts = { startDelayMs: 0, handler: defaultHandler, failStart: () => false, kindOf: () => "fetch" as const, ...options } satisfies Required<FakeDriverOptions>;
  const instances = new Map<string, FakeInstance>();
  const exitListeners = new Set<(info: ExitInfo) => void>();
  const logListeners = new Set<(line: LogLine) => void>();
  let started = 0;
  let stopped = 0;
  let disposed = false;

  function emitLog(instance: FakeInstance, text: string, stream: LogLine["stream"], requestId: string | undefined) {
    const line: LogLine = { ts: Date.now(), instance: instance.handle.id, stream, text, ...(requestId ? { requestId } : {}) };
    instance.log.push(line);
    for (const listener of logListeners) listener(line);
  }

  async function end(instance: FakeInstance): Promise<void> {
    if (!instance.running) return;
    instance.running = false;
    await instance.server?.stop(true);
    instance.log.end();
    // Nothing of a dead fake is worth keeping; a test that forgets to stop leaks no folder.
    await rm(instance.dir, { recursive: true, force: true });
  }

  async function crash(id: string, code = 137, reason = code === 137 ? "killed" : "exited"): Promise<void> {
    const instance = instances.get(id);
    if (!instance?.running) return;
    await end(instance);
    const info: ExitInfo = { id, code, reason };
    for (const listener of exitListeners) listener(info);
  }

  async function serveControl(instance: FakeInstance, request: Request, path: string): Promise<Response | undefined> {
    if (path === CONTROL_HEALTH && request.method === "GET") {
      const { spec } = instance;
      return Response.json({
        ok: true,
        specialized: spec.function !== undefined,
        function: spec.function ?? null,
        version: spec.version ?? null,
        pid: process.pid,
        kind: spec.function === undefined ? null : opts.kindOf(spec),
        pending: 0,
      });
    }
    if (path === CONTROL_SPECIALIZE && request.method === "POST") {
      if (instance.spec.function !== undefined) {
        return Response.json({ error: { code: "already_specialized", message: "already specialized" } }, { status: 409 });
      }
      const body = (await request.json()) as SpecializeRequest;
      instance.specialization = { ...body, at: Date.now() };
      instance.spec = { ...instance.spec, function: body.function, version: body.version, env: body.env, ...(body.dir ? { artifactDir: body.dir } : {}) };
      return Response.json({ ok: true, loadMs: 0 });
    }
    return undefined;
  }

  function serve(instance: FakeInstance) {
    return async (request: Request): Promise<Response> => {
      if (request.headers.get(CONTROL_HEADER) === instance.handle.controlToken) {
        const answer = await serveControl(instance, request, new URL(request.url).pathname);
        if (answer) return answer;
      }
      if (instance.spec.function === undefined) {
        return Response.json({ error: { code: "not_specialized", message: "not specialized" } }, { status: 503 });
      }
      const requestId = request.headers.get(REQUEST_ID_HEADER) ?? undefined;
      let exitCode: number | undefined;
      const ctx: FakeContext = {
        instance: instance.handle.id,
        requestId,
        log: (text, stream = "stdout") => emitLog(instance, text, stream, requestId),
        exit: (code = 0) => {
          exitCode = code;
        },
        allocate: (bytes) => {
          instance.resident += bytes;
        },
      };
      try {
        return await opts.handler(request, instance.spec, ctx);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        return Response.json({ error: { code: "function_error", message } }, { status: 500 });
      } finally {
        // Like process.exit in a function: the connection drops, the exit is reported.
        if (exitCode !== undefined) setTimeout(() => void crash(instance.handle.id, exitCode), 0);
      }
    };
  }

  async function start(spec: InstanceSpec, signal?: AbortSignal): Promise<InstanceHandle> {
    if (disposed) throw new ForgeError(ErrorCode.Disposed, 503, "the fake driver was disposed");
    if (instances.has(spec.id)) throw new ForgeError(ErrorCode.Conflict, 409, `an instance with id ${spec.id} already exists`);
    signal?.throwIfAborted();
    const delay = opts.startDelayMs;
    const held = typeof delay === "function" ? delay(spec) : delay > 0 ? Bun.sleep(delay) : undefined;
    if (held) {
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => reject(signal?.reason);
        signal?.addEventListener("abort", onAbort, { once: true });
        held.then(resolve, reject).finally(() => signal?.removeEventListener("abort", onAbort));
      });
    }
    if (disposed) throw new ForgeError(ErrorCode.Disposed, 503, "the fake driver was disposed");
    if (opts.failStart(spec)) {
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `the fake instance ${spec.id} failed to start`);
    }
    const dir = await mkdtemp(join(tmpdir(), "forge-fake-"));
    const socketPath = join(dir, "s.sock");
    const handle: InstanceHandle = {
      id: spec.id,
      spec,
      endpoint: { socketPath },
      controlToken: crypto.randomUUID(),
      startedAt: Date.now(),
    };
    const instance: FakeInstance = {
      handle,
      spec,
      dir,
      log: new InstanceLog(1_000),
      running: true,
      specialization: undefined,
      memoryMb: undefined,
      resident: FAKE_RESIDENT_BYTES,
    };
    instance.server = Bun.serve({ unix: socketPath, fetch: serve(instance) });
    instances.set(spec.id, instance);
    started++;
    return handle;
  }

  async function stop(id: string): Promise<void> {
    const instance = instances.get(id);
    if (!instance) return;
    instances.delete(id);
    stopped++;
    await end(instance);
  }

  async function dispose(): Promise<void> {
    disposed = true;
    await Promise.all([...instances.keys()].map((id) => stop(id)));
  }

  return {
    name: "fake",
    get started() {
      return started;
    },
    get stopped() {
      return stopped;
    },
    start,
    stop,
    async list(): Promise<ListedInstance[]> {
      return [...instances.values()].map(({ handle: { spec }, running }) => ({
        id: spec.id,
        role: spec.role,
        ...(spec.function !== undefined ? { function: spec.function } : {}),
        ...(spec.version !== undefined ? { version: spec.version } : {}),
        running,
      }));
    },
    async *logs(id: string, options?: LogOptions): AsyncIterable<LogLine> {
      const instance = instances.get(id);
      if (instance) yield* instance.log.read(options);
    },
    onExit(listener) {
      exitListeners.add(listener);
      return () => exitListeners.delete(listener);
    },
    onLog(listener) {
      logListeners.add(listener);
      return () => logListeners.delete(listener);
    },
    async placeArtifact(id: string, artifactDir: string): Promise<{ dir: string; bundle: string }> {
      const instance = instances.get(id);
      if (!instance?.running) throw new ForgeError(ErrorCode.InstanceCrashed, 502, `instance ${id} is not running`);
      // a real copy (the fake runs no code, but tests look at what an instance was given)
      const dir = join(instance.dir, ARTIFACT_COPY);
      await copyArtifact(artifactDir, dir);
      return { dir, bundle: join(dir, BUNDLE_FILE) };
    },
    async setMemory(id: string, memoryMb: number): Promise<void> {
      const instance = instances.get(id);
      if (instance) instance.memoryMb = memoryMb;
    },
    live: () => [...instances.values()].filter((i) => i.running).map((i) => i.handle.id),
    crash,
    async hang(id) {
      await instances.get(id)?.server?.stop(true);
    },
    specialization: (id) => instances.get(id)?.specialization,
    memoryOf: (id) => instances.get(id)?.memoryMb,
    async memoryUsage(): Promise<Map<string, number>> {
      return new Map([...instances.values()].filter((i) => i.running).map((i) => [i.handle.id, i.resident]));
    },
    setMemoryUsage(id, bytes) {
      const instance = instances.get(id);
      if (instance?.running) instance.resident = bytes;
    },
    handle: (id) => instances.get(id)?.handle,
    dispose,
    [Symbol.asyncDispose]: dispose,
  };
}
