/**
 * The process driver: every instance is a Bun child process running forge's shim, reached
 * over a Unix socket in its own folder. The embedded default on a machine without Docker.
 *
 * What it does not isolate: a child runs as forge's user and can read what forge can.
 * It only keeps forge's environment and other functions' folders out of the function's way.
 * Nor the network: InstanceSpec.networks is ignored, a child shares the host's network
 * (reaches what the host reaches, forge's port included), and "network": "none" cannot hold.
 *
 * Memory is held to memoryMb by a cgroup per instance when forge runs as root, else by a
 * watch of each instance's resident memory (_memory-limit.ts); an instance stopped for it
 * ends with reason "oom" and a line in its log saying so.
 */
import { randomUUID } from "node:crypto";
import { chmod, chown, copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Subprocess } from "bun";
import { createConsola, type ConsolaInstance } from "consola";
import { ErrorCode, ForgeError } from "../errors.ts";
import { ARTIFACT_COPY, copyArtifact } from "./_artifact-copy.ts";
import { ownerOf } from "./_docker-names.ts";
import { createMemoryLimiter, type MemoryEnforcement, type MemoryLimitMode } from "./_memory-limit.ts";
import { processTreeResident, residentBytes } from "./_memory-usage.ts";
import { RuntimeCopies, traversable } from "./_runtime-reach.ts";
import { nodeHeapFlag, shimSettings } from "./_shim-env.ts";
import { heapExhausted, InstanceLog, parseLogLine, readLines, startFailureTail } from "./_log-parse.ts";
import {
  BUNDLE_FILE,
  type Driver,
  type ExitInfo,
  type InstanceHandle,
  type InstanceSpec,
  type ListedInstance,
  type LogLine,
  type LogOptions,
} from "./driver.ts";
import { waitReady } from "./instance-client.ts";

export interface ProcessDriverOptions {
  /** Instance folders live under `<dataDir>/instances/`. */
  dataDir: string;
  /** Where the driver reports. Default: a silent consola. */
  logger?: ConsolaInstance;
  /** The bun binary. Default process.execPath (the bun running forge). */
  bunPath?: string;
  /** The shim bun runs. Default runtimes/js/shim.ts of this checkout. */
  shimPath?: string;
  /**
   * Runtime "node": the node binary and the shim built for Node (a JavaScript file; a
   * function is called on first use, so a forge that never runs a node function never
   * builds it). Absent: a node instance fails to start with a hint.
   */
  node?: { bin: string; shim: string | (() => Promise<string>) };
  /** How long an instance may take to answer its first health check. Default 10 000. */
  startTimeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL on stop. Default 2 000. */
  stopGraceMs?: number;
  /** Log lines kept per instance for logs(). Default 1 000. */
  logLines?: number;
  /** PATH given to instances (never forge's own). Default /usr/local/bin:/usr/bin:/bin. */
  path?: string;
  /**
   * Run each instance as a uid of its own (from 200000 up), so that no function reads
   * another's folder, forge's database or its key. Needs root. Default: on when forge runs
   * as root.
   */
  isolateUsers?: boolean;
  /**
   * How memoryMb is held: "cgroup" (a memory cgroup per instance, v1 or v2: needs root and a
   * writable cgroup file system, else the driver does not start), "rss" (each instance's
   * resident memory read every 250 ms, one over its limit stopped), "off", or "auto": a
   * cgroup when forge runs as root and can write one, else "rss". Default "auto".
   */
  memoryLimits?: MemoryLimitMode;
}

/** The process driver, with what it found at start. */
export interface ProcessDriver extends Driver {
  readonly name: "process";
  /** How memoryMb is held on this machine. */
  readonly memoryLimits: MemoryEnforcement;
  memoryUsage(): Promise<Map<string, number>>;
}

/** First uid given to instances when isolateUsers is on; far above any real account. */
const INSTANCE_UID_BASE = 200_000;
const INSTANCE_UID_SPAN = 60_000;

const DEFAULT_SHIM = resolve(dirname(fileURLToPath(import.meta.url)), "../../runtimes/js/shim.ts");

/**
 * Unix socket paths are limited to 108 bytes (sun_path) including the NUL on Linux, 104 on
 * macOS; past that bind() fails. Stay well below both.
 */
const MAX_SOCKET_PATH = 100;

/**
 * Node's flags: no inspector or REPL habits, and warnings (a function's deprecated API) go
 * to stderr as they would on Lambda. Kept short: every flag is parsed on every start.
 */
const NODE_FLAGS = ["--disable-warning=ExperimentalWarning"];

/** Memory at or below which the child runs with `--smol` (a GC that favours footprint). */
const SMOL_AT_MB = 128;

interface ProcessInstance {
  handle: InstanceHandle;
  dir: string;
  proc: Subprocess<"pipe", "pipe", "pipe">;
  log: InstanceLog;
  /** Set once it answered its first health check; an instance failing to start gets no exit notice. */
  ready: boolean;
  /** Set once stop() (or a failed start) owns the end of this instance: no exit notice. */
  stopping: Promise<void> | undefined;
  /** Settles when the process has exited and its output is drained. */
  ended: Promise<void>;
  /** Its memory limit, MiB (a stem cell's changes when it is specialized). */
  limitMb: number;
  /** Stopped for going over limitMb (by the kernel, or by the watch). */
  oom: boolean;
}

export function createProcessDriver(options: ProcessDriverOptions): ProcessDriver {
  const opts = {
    logger: createConsola({ level: -999 }),
    bunPath: process.execPath,
    shimPath: DEFAULT_SHIM,
    startTimeoutMs: 10_000,
    stopGraceMs: 2_000,
    logLines: 1_000,
    path: "/usr/local/bin:/usr/bin:/bin",
    ...options,
  };
  const dataDir = resolve(opts.dataDir);
  const logger = opts.logger.withTag("process-driver");
  const isolate = opts.isolateUsers ?? process.getuid?.() === 0;
  let nextUid = 0;
  // Can another uid pass through every folder above the data dir (o+x)?
  const ancestorsOpen = isolate && traversable(dirname(dataDir));
  // Children of this run only: a process carries no labels, so after a restart of forge
  // there is nothing to find or adopt. Nor is there anything to clean: each shim exits when
  // its stdin (a pipe from this process) closes, so children die with forge, even by SIGKILL.
  const instances = new Map<string, ProcessInstance>();
  const exitListeners = new Set<(info: ExitInfo) => void>();
  const logListeners = new Set<(line: LogLine) => void>();
  /** Ids between start() and the spawn, so a second start of the same id fails at once. */
  const preparing = new Set<string>();
  let disposed = false;
  /** The node shim, once built (shared by every node instance). */
  let nodeShim: Promise<string> | undefined;

  // What this machine allows, found once at start: how memoryMb is held, and whether
  // instances of their own uids reach the runtime where it is (else they run copies of it).
  const owner = ownerOf(dataDir);
  const memoryMode = opts.memoryLimits ?? "auto";
  const memory = createMemoryLimiter({ mode: memoryMode, owner, root: process.getuid?.() === 0, logger, onOver: overLimit });
  logger.info(
    memory.kind === "rss watch" && memoryMode === "auto"
      ? "memory limits: each instance's resident memory is watched (a memory cgroup per instance needs forge to run as root with /sys/fs/cgroup writable)"
      : `memory limits: ${memory.kind}`,
  );
  if (!isolate && opts.isolateUsers === undefined) {
    logger.warn("instances run as forge's own user, so a function can read what forge can (its database, its API key): run forge as root to give each instance a uid of its own");
  }
  const runtime = isolate ? new RuntimeCopies({ dataDir, owner, logger }) : undefined;
  if (runtime && opts.node) {
    // Built on first use (see the option): reached once built.
    const { shim } = opts.node;
    opts.node = { ...opts.node, shim: async () => runtime.reach(typeof shim === "string" ? shim : await shim(), "read") };
  }
  /** Settles once bunPath, shimPath and node.bin name files instances reach; launch() waits for it. */
  const runtimeReady = (async () => {
    if (!runtime) return;
    opts.bunPath = await runtime.reach(opts.bunPath, "exec");
    opts.shimPath = await runtime.reach(opts.shimPath, "read");
    if (opts.node && isAbsolute(opts.node.bin)) opts.node.bin = await runtime.reach(opts.node.bin, "exec");
  })();

  function emitLog(line: LogLine): void {
    for (const listener of logListeners) {
      try {
        listener(line);
      } catch (err) {
        logger.warn("a log listener threw", err);
      }
    }
  }

  async function instanceDir(id: string): Promise<string> {
    const dir = join(dataDir, "instances", id);
    if (Buffer.byteLength(join(dir, "s.sock")) <= MAX_SOCKET_PATH && (!isolate || ancestorsOpen)) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // An instance of its own uid must pass through (not list) the data dir to its folder.
      if (isolate) await Promise.all([chmod(dataDir, 0o711), chmod(join(dataDir, "instances"), 0o711)]);
      return dir;
    }
    // A deep data dir would push the socket past the sun_path limit, and a data dir inside a
    // closed folder cannot be reached by an instance's own uid: use a short private folder
    // under the temp dir instead (mkdtemp makes it 0700; launch() hands it to the instance).
    return mkdtemp(join(tmpdir(), `forge-${id.slice(0, 12)}-`));
  }

  async function pump(instance: string, stream: ReadableStream<Uint8Array>, name: LogLine["stream"], log: InstanceLog) {
    try {
      for await (const raw of readLines(stream)) {
        const { requestId, text } = parseLogLine(raw);
        const line: LogLine = { ts: Date.now(), instance, stream: name, text, ...(requestId ? { requestId } : {}) };
        log.push(line);
        emitLog(line);
      }
    } catch (err) {
      logger.debug(`reading ${name} of ${instance} stopped`, err);
    }
  }

  async function start(spec: InstanceSpec, signal?: AbortSignal): Promise<InstanceHandle> {
    if (disposed) throw new ForgeError(ErrorCode.Disposed, 503, "the process driver was disposed");
    if (spec.runtime === "docker") {
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, `the process driver cannot run a ${spec.runtime} image`, {
        hint: "functions with runtime \"docker\" need the docker driver (FORGE_DRIVER=docker)",
      });
    }
    if (spec.runtime === "node" && !opts.node) {
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, "this forge has no node binary to run runtime \"node\" with", {
        hint: "install Node.js (node on PATH) or set FORGE_NODE_BIN, then restart forge",
      });
    }
    if (instances.has(spec.id) || preparing.has(spec.id)) {
      throw new ForgeError(ErrorCode.Conflict, 409, `an instance with id ${spec.id} already exists`);
    }
    signal?.throwIfAborted();
    preparing.add(spec.id);
    try {
      return await launch(spec, signal);
    } finally {
      preparing.delete(spec.id);
    }
  }

  async function launch(spec: InstanceSpec, signal?: AbortSignal): Promise<InstanceHandle> {
    await runtimeReady;
    // 1. Create its folder; the bundle is copied in so the instance never reads another folder.
    const dir = await instanceDir(spec.id);
    const socketPath = join(dir, "s.sock");
    const uid = isolate ? INSTANCE_UID_BASE + (nextUid++ % INSTANCE_UID_SPAN) : undefined;
    let bundle: string | undefined;
    let fnDir: string | undefined;
    try {
      if (spec.artifactDir) {
        // the version's folder, its own copy: the function's working directory
        fnDir = join(dir, ARTIFACT_COPY);
        await copyArtifact(spec.artifactDir, fnDir);
        bundle = join(fnDir, BUNDLE_FILE);
      } else if (spec.bundlePath) {
        bundle = join(dir, "fn.mjs");
        await copyFile(spec.bundlePath, bundle);
      }
      if (uid !== undefined) {
        await chown(dir, uid, uid);
        // the copy of a folder stays forge's (read-only to the instance); a lone bundle is the instance's
        if (bundle && !fnDir) await chown(bundle, uid, uid);
      }
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not copy the bundle of ${spec.function ?? spec.id}`, {
        cause: err,
      });
    }
    // dispose() or an abort may have come while the folder was made: spawn nothing then.
    if (disposed || signal?.aborted) {
      await rm(dir, { recursive: true, force: true });
      signal?.throwIfAborted();
      throw new ForgeError(ErrorCode.Disposed, 503, "the process driver was disposed");
    }

    // 2. Start the shim with the function's env and nothing of forge's.
    const controlToken = randomUUID();
    const env: Record<string, string> = {
      // UTC, as Lambda and Workers run (the function's env may set its own); set at spawn, since
      // the shim changing TZ costs ~0.4 ms on a stem cell's specialization.
      TZ: "UTC",
      PATH: opts.path,
      HOME: dir,
      TMPDIR: dir,
      ...spec.env,
      FORGE_SOCKET: socketPath,
      FORGE_CONTROL_TOKEN: controlToken,
      FORGE_INSTANCE_ID: spec.id,
      FORGE_WORK_DIR: dir,
      FORGE_EXIT_WITH_PARENT: "1",
      ...(bundle ? { FORGE_BUNDLE: bundle } : {}),
      ...(fnDir ? { FORGE_FUNCTION_DIR: fnDir } : {}),
      ...shimSettings(spec),
    };
    let command: string[];
    try {
      command = await commandFor(spec);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not prepare the ${spec.runtime} shim`, { cause: err });
    }
    try {
      await memory.prepare(spec.id, spec.memoryMb);
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not set up the memory limit of ${spec.function ?? spec.id} (${memory.kind})`, {
        hint: "the server log has the cause; restarting forge finds how memory can be limited again",
        cause: err,
      });
    }
    let proc: Subprocess<"pipe", "pipe", "pipe">;
    try {
      proc = Bun.spawn(command, {
        cwd: fnDir ?? dir,
        env,
        ...(uid !== undefined ? { uid, gid: uid } : {}),
        // Never written: the shim exits when it closes, i.e. when forge dies.
        stdin: "pipe",
        stdout: "pipe",
        stderr: "pipe",
      });
    } catch (err) {
      await Promise.all([rm(dir, { recursive: true, force: true }), memory.release(spec.id)]);
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not run ${command[0]}`, {
        hint: `check the ${spec.runtime} binary forge runs instances with`,
        cause: err,
      });
    }
    try {
      // At once: the shim takes tens of ms to start before it loads the function's code.
      memory.enter(spec.id, proc.pid);
    } catch (err) {
      proc.kill("SIGKILL");
      await proc.exited;
      await Promise.all([rm(dir, { recursive: true, force: true }), memory.release(spec.id)]);
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not put the instance of ${spec.function ?? spec.id} under its memory limit (${memory.kind})`, {
        hint: "the server log has the cause",
        cause: err,
      });
    }
    const log = new InstanceLog(opts.logLines);
    const drained = Promise.all([
      pump(spec.id, proc.stdout, "stdout", log),
      pump(spec.id, proc.stderr, "stderr", log),
    ]);
    const handle: InstanceHandle = {
      id: spec.id,
      spec,
      endpoint: { socketPath },
      controlToken,
      startedAt: Date.now(),
    };
    const instance: ProcessInstance = {
      handle,
      dir,
      proc,
      log,
      ready: false,
      stopping: undefined,
      ended: proc.exited.then(async () => {
        // Killed by the kernel for its memory: said in its log, before the log ends.
        if (proc.signalCode === "SIGKILL" && memory.oomKilled(spec.id)) stoppedForMemory(instance);
        // A grandchild holding the pipes open must not keep the exit notice back for long.
        await Promise.race([drained, new Promise((r) => setTimeout(r, 1_000).unref())]);
        log.end();
      }),
      limitMb: spec.memoryMb,
      oom: false,
    };
    instances.set(spec.id, instance);
    void Promise.all([proc.exited, instance.ended]).then(([status]) => {
      if (instance.stopping || !instance.ready) return;
      const info: ExitInfo = {
        id: spec.id,
        // For a signal, Bun reports 128 + its number (137 for SIGKILL), as Docker does.
        code: status,
        reason: instance.oom || heapExhausted(log) ? "oom" : proc.signalCode === null ? "exited" : "killed",
      };
      logger.debug(`instance ${spec.id} ended on its own`, info);
      for (const listener of exitListeners) {
        try {
          listener(info);
        } catch (err) {
          logger.warn("an exit listener threw", err);
        }
      }
      // Its cgroup goes now (with anything the function left running in it); the folder and the log stay until stop().
      memory.release(spec.id).catch((err: unknown) => logger.warn(`could not remove the memory cgroup of ${spec.id}:`, err));
    });

    // 3. Wait until it answers, racing its exit.
    try {
      await waitReady(handle, controlToken, { timeoutMs: opts.startTimeoutMs, signal, exited: proc.exited });
    } catch (err) {
      const tail = startFailureTail(log);
      await stop(spec.id);
      if (instance.oom) {
        throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `the instance went over its memory limit of ${instance.limitMb} MiB while it started`, {
          hint: 'raise memoryMb (forge.json "memoryMb", or forge deploy --memory N)',
          cause: err,
        });
      }
      if (err instanceof ForgeError && tail) {
        throw new ForgeError(err.code, err.status, `${err.message}: ${tail}`, { hint: err.hint, cause: err.cause });
      }
      throw err;
    }
    instance.ready = true;
    logger.debug(`instance ${spec.id} ready in ${Date.now() - handle.startedAt} ms`);
    return handle;
  }

  /** The command line of an instance of `spec.runtime` (bun or node). */
  async function commandFor(spec: InstanceSpec): Promise<string[]> {
    if (spec.runtime === "node" && opts.node) {
      const shim = typeof opts.node.shim === "string" ? opts.node.shim : await (nodeShim ??= opts.node.shim().catch((err: unknown) => {
              nodeShim = undefined;
              throw err;
            }));
      return [opts.node.bin, ...NODE_FLAGS, nodeHeapFlag(spec), shim];
    }
    return [opts.bunPath, "--no-install", "--no-env-file", ...(spec.memoryMb <= SMOL_AT_MB ? ["--smol"] : []), opts.shimPath];
  }

  async function placeArtifact(id: string, artifactDir: string): Promise<{ dir: string; bundle: string }> {
    const instance = instances.get(id);
    if (!instance || instance.stopping) throw new ForgeError(ErrorCode.InstanceCrashed, 502, `instance ${id} is not running`);
    const dir = join(instance.dir, ARTIFACT_COPY);
    await copyArtifact(artifactDir, dir);
    return { dir, bundle: join(dir, BUNDLE_FILE) };
  }

  function stop(id: string): Promise<void> {
    const instance = instances.get(id);
    if (!instance) return Promise.resolve();
    instance.stopping ??= (async () => {
      const { proc } = instance;
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        let timer: ReturnType<typeof setTimeout> | undefined;
        const graceOver = new Promise<"late">((r) => (timer = setTimeout(() => r("late"), opts.stopGraceMs)));
        if ((await Promise.race([proc.exited, graceOver])) === "late") proc.kill("SIGKILL");
        clearTimeout(timer);
        await proc.exited;
      }
      await instance.ended;
      await Promise.all([
        rm(instance.dir, { recursive: true, force: true }),
        memory.release(id).catch((err: unknown) => logger.warn(`could not remove the memory cgroup of ${id}:`, err)),
      ]);
      instances.delete(id);
    })();
    return instance.stopping;
  }

  /** A stem cell specialized for a function takes the function's limit. */
  async function setMemory(id: string, memoryMb: number): Promise<void> {
    const instance = instances.get(id);
    if (!instance || instance.stopping) return;
    await memory.setLimit(id, memoryMb);
    instance.limitMb = memoryMb;
  }

  /** The watch saw an instance over its limit: stopped at once, by SIGKILL as the kernel's OOM killer does. */
  function overLimit(id: string, usedMb: number): void {
    const instance = instances.get(id);
    if (!instance || instance.stopping) return;
    stoppedForMemory(instance, usedMb);
    instance.proc.kill("SIGKILL");
  }

  /** Marks an instance as stopped for memory (its exit reason "oom") and says so in its log. */
  function stoppedForMemory(instance: ProcessInstance, usedMb?: number): void {
    if (instance.oom) return;
    instance.oom = true;
    const used = usedMb === undefined ? "" : ` (it used ${Math.round(usedMb)} MiB)`;
    const line: LogLine = {
      ts: Date.now(),
      instance: instance.handle.id,
      stream: "stderr",
      text: `forge: instance stopped: it went over its memory limit of ${instance.limitMb} MiB${used}`,
    };
    instance.log.push(line);
    emitLog(line);
  }

  /**
   * What each live instance uses: its cgroup's working set where it has one, else the resident
   * memory of its process tree (its own pages, not the bun binary's shared ones).
   */
  async function memoryUsage(): Promise<Map<string, number>> {
    const live = [...instances.values()].filter(({ proc, stopping }) => !stopping && proc.exitCode === null && proc.signalCode === null);
    const measured = await Promise.all(
      live.map(async ({ handle, proc }): Promise<readonly [string, number | undefined]> => {
        const [cgroup, own] = await Promise.all([memory.workingSet(handle.id), residentBytes(proc.pid)]);
        if (cgroup === undefined) return [handle.id, await processTreeResident(proc.pid)];
        // cgroup v1 leaves what the shim touched before it entered its cgroup (~2 of an idle
        // bun's ~3 MiB) charged where it was: the process's own pages are the floor.
        return [handle.id, own === undefined ? cgroup : Math.max(cgroup, own)];
      }),
    );
    const usage = new Map<string, number>();
    for (const [id, bytes] of measured) {
      // stopped while it was read: no longer live
      const instance = instances.get(id);
      if (bytes !== undefined && instance && !instance.stopping) usage.set(id, bytes);
    }
    return usage;
  }

  async function list(): Promise<ListedInstance[]> {
    return [...instances.values()].map(({ handle: { spec }, proc }) => ({
      id: spec.id,
      role: spec.role,
      ...(spec.function !== undefined ? { function: spec.function } : {}),
      ...(spec.version !== undefined ? { version: spec.version } : {}),
      running: proc.exitCode === null && proc.signalCode === null,
    }));
  }

  async function* logs(id: string, options?: LogOptions): AsyncIterable<LogLine> {
    const instance = instances.get(id);
    if (!instance) return;
    yield* instance.log.read(options);
  }

  function onExit(listener: (info: ExitInfo) => void): () => void {
    exitListeners.add(listener);
    return () => exitListeners.delete(listener);
  }

  function onLog(listener: (line: LogLine) => void): () => void {
    logListeners.add(listener);
    return () => logListeners.delete(listener);
  }

  async function dispose(): Promise<void> {
    disposed = true;
    await Promise.all([...instances.keys()].map((id) => stop(id)));
    await Promise.all([memory.dispose(), runtime?.dispose()]);
  }

  return {
    name: "process",
    memoryLimits: memory.kind,
    start,
    stop,
    list,
    logs,
    onExit,
    onLog,
    placeArtifact,
    setMemory,
    memoryUsage,
    dispose,
    [Symbol.asyncDispose]: dispose,
  };
}

