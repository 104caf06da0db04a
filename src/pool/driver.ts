/**
 * The Driver interface: the only way the pool reaches instances. A driver starts a runtime
 * (a Bun child process, a container, or an in-process fake) from a spec, stops it, lists
 * what exists with forge's labels, streams its logs and reports its exits. The pool knows
 * nothing of Docker or processes.
 */

export type InstanceRole = "instance" | "cell";

/** Language runtimes that run forge's shim (runtimes/js/shim.ts) and take the function contract of DESIGN §2. */
export type ShimRuntime = "bun" | "node";
export const SHIM_RUNTIMES: readonly ShimRuntime[] = ["bun", "node"];
/** What an instance runs: forge's shim on a language runtime, or a user's image serving HTTP on $PORT ("docker"). */
export type InstanceRuntime = ShimRuntime | "docker";

/** True for the runtimes that run forge's shim (control routes, specialization, drain). */
export function isShimRuntime(runtime: string): runtime is ShimRuntime {
  return runtime === "bun" || runtime === "node";
}

/** How forge reaches an instance: always a Unix socket on local drivers. */
export interface Endpoint {
  /** Path of the Unix socket the shim listens on. */
  socketPath: string;
}

export interface InstanceSpec {
  /** Unique id, short and DNS-safe (used in container and folder names). */
  id: string;
  role: InstanceRole;
  /** Runtime: "bun" and "node" run forge's shim on that runtime; "docker" runs a user image serving HTTP on $PORT. */
  runtime: InstanceRuntime;
  /** Function and version this instance serves; absent for a stem cell. */
  function?: string;
  version?: number;
  /** Bun runtime: the bundled entry module to load at start (absent: start generic). With artifactDir, it is `<artifactDir>/<BUNDLE_FILE>`. */
  bundlePath?: string;
  /**
   * Bun runtime: the version's folder on the host (the function's files, the bundle at its
   * root as BUNDLE_FILE). The instance gets a copy it sees as its working directory, which
   * `__dirname`, `import.meta.dir` and `process.cwd()` point at. Absent: only the bundle.
   */
  artifactDir?: string;
  /** The function's timeout, ms: Lambda's getRemainingTimeInMillis() counts down from it. */
  timeoutMs?: number;
  /** The export the shim calls as a Lambda handler (forge.json `"handler": "file.export"`). */
  handler?: string;
  /** AWS_REGION and AWS_DEFAULT_REGION as the function sees them. */
  region?: string;
  /** Image to run (docker driver); the runtime image for cells. */
  image?: string;
  /** The function's own environment; nothing of forge's leaks in. */
  env: Record<string, string>;
  /** Memory limit in MiB. */
  memoryMb: number;
  /**
   * The networks the instance or cell joins, exactly (docker driver): forge's egress network
   * for outbound access, bound databases' networks. Empty or absent: no network at all
   * (NetworkMode none). The process driver ignores it: processes share the host's network.
   */
  networks?: string[];
}

export interface InstanceHandle {
  readonly id: string;
  readonly spec: InstanceSpec;
  readonly endpoint: Endpoint;
  /** Token the shim expects in `x-forge-control` on its control routes. */
  readonly controlToken: string;
  readonly startedAt: number;
}

/** What `list()` reports: instances this driver (or an earlier run of forge) left on the host. */
export interface ListedInstance {
  id: string;
  role: InstanceRole;
  function?: string;
  version?: number;
  running: boolean;
}

export interface ExitInfo {
  id: string;
  /** Exit code when known. */
  code: number | null;
  /** Why, when known: "exited", "killed", "oom", "stopped". */
  reason: string;
}

export interface LogLine {
  /** Epoch milliseconds. */
  ts: number;
  instance: string;
  stream: "stdout" | "stderr";
  /** Request id the line was written under, when the shim knew it. */
  requestId?: string;
  text: string;
}

export interface LogOptions {
  /** Keep streaming new lines until the signal aborts or the instance ends. */
  follow?: boolean;
  signal?: AbortSignal;
}

export interface Driver extends AsyncDisposable {
  readonly name: "process" | "docker" | "fake";
  /** Starts an instance and resolves once it answers its health check. */
  start(spec: InstanceSpec, signal?: AbortSignal): Promise<InstanceHandle>;
  /** Stops and removes an instance; stopping an unknown or stopped one is not an error. */
  stop(id: string): Promise<void>;
  /** Instances on the host carrying forge's labels, this run's and earlier runs'. */
  list(): Promise<ListedInstance[]>;
  /** Log lines of one instance, from the start of its life. */
  logs(id: string, options?: LogOptions): AsyncIterable<LogLine>;
  /** Registers a listener for instance exits (not called for stop()); returns an unsubscribe. */
  onExit(listener: (info: ExitInfo) => void): () => void;
  /** Registers a listener for every log line of every instance; returns an unsubscribe. */
  onLog(listener: (line: LogLine) => void): () => void;
  /**
   * Gives a running instance (a stem cell about to be specialized) its own copy of a version's
   * folder (InstanceSpec.artifactDir) and answers the paths the instance sees: the folder and
   * the bundle in it. Cheap enough for the cell path (hard links where the filesystem allows).
   */
  placeArtifact(id: string, artifactDir: string): Promise<{ dir: string; bundle: string }>;
  /** Optional: change a running instance's memory limit (docker, after a cell is specialized). */
  setMemory?(id: string, memoryMb: number): Promise<void>;
  /**
   * Optional: told once a stem cell serves a function, so what the host shows says which
   * (docker: the container takes the function's name). Cosmetic: the pool calls it off the
   * request's path, and a cell that went away meanwhile is not an error.
   */
  specialized?(id: string, as: { function: string; version: number }): Promise<void>;
  /**
   * Optional: resident memory of each live instance and stem cell this driver started, in
   * bytes, by driver id (an instance it cannot measure right now is left out). Cheap enough
   * to be called every 500 ms with a few hundred instances.
   */
  memoryUsage?(): Promise<Map<string, number>>;
  /** Stops everything this driver started. */
  dispose(): Promise<void>;
}

/** Header naming the per-instance control token on the shim's control routes. */
export const CONTROL_HEADER = "x-forge-control";
/** Control routes of the shim (only with a valid control token). */
export const CONTROL_HEALTH = "/__forge/health";
export const CONTROL_SPECIALIZE = "/__forge/specialize";
/**
 * `POST /__forge/invoke<path>`: the body is an invoke payload (forge invoke, async). A Lambda
 * handler gets the JSON payload itself as its event and the answer is its result as JSON; a
 * fetch handler gets `POST <path>` with the body.
 */
export const CONTROL_INVOKE = "/__forge/invoke";
/**
 * `POST /__forge/scheduled<path>`: a cron tick (headers x-forge-schedule-cron and
 * x-forge-schedule-tick, body the schedule's payload). A module exporting `scheduled` gets
 * `scheduled(controller, env, ctx)`; a Lambda handler the payload (or an EventBridge
 * "Scheduled Event"); a fetch handler `POST <path>`.
 */
export const CONTROL_SCHEDULED = "/__forge/scheduled";
/** `POST /__forge/drain`: answers once the instance's pending ctx.waitUntil work has settled (bounded). */
export const CONTROL_DRAIN = "/__forge/drain";
/** Name of the bundle at the root of a version's folder (and of the instance's copy); the artifact's layout is build's. */
export { BUNDLE_FILE } from "../build/artifact.ts";

/** Body of a specialize call: what turns a stem cell into a function's instance. */
export interface SpecializeRequest {
  function: string;
  version: number;
  /** The bundled entry module as source (written to the cell's tmp); absent when `bundle` is given. */
  code?: string;
  /** The function's folder as the instance sees it: its working directory and LAMBDA_TASK_ROOT. */
  dir?: string;
  /** Path of the bundle as the instance sees it (inside `dir`). */
  bundle?: string;
  env: Record<string, string>;
  timeoutMs?: number;
  memoryMb?: number;
  handler?: string;
  region?: string;
}
