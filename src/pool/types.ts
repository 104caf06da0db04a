import type { InstanceHandle, InstanceRuntime } from "./driver.ts";

export type StartKind = "warm" | "cell" | "cold";

/** What a pool needs to know of a function version. */
export interface PoolSpec {
  function: string;
  version: number;
  runtime: InstanceRuntime;
  /** Requests one instance serves at once. */
  concurrency: number;
  /** Concurrency instead when the module turns out to be a Lambda handler (the config set none). */
  lambdaConcurrency?: number;
  minWarm: number;
  maxInstances: number;
  memoryMb: number;
  timeoutMs: number;
  /** The function's environment, database bindings included. */
  env: Record<string, string>;
  /** Bun runtime: path of the bundled entry module (inside artifactDir when there is one). */
  bundlePath?: string;
  /** Bun runtime: the version's folder (the function's files and the bundle as BUNDLE_FILE). */
  artifactDir?: string;
  /** The export called as a Lambda handler (forge.json `handler`, the part after the dot). */
  handler?: string;
  /** Image of this version (docker driver; runtime "docker" always). */
  image?: string;
  /** Networks the instances join (docker driver: bound databases); none means no network at all. */
  networks?: string[];
}

/** A slot on an instance, held for one request. */
export interface Lease {
  readonly instance: InstanceHandle;
  readonly version: number;
  /** warm: an instance was ready; cell: a stem cell was specialized for it; cold: a new instance was started. */
  readonly start: StartKind;
  readonly queueWaitMs: number;
  /** Gives the slot back; idempotent. */
  release(): void;
  /**
   * The request became a WebSocket: its request slot goes back at once (as on Workers, an open
   * WebSocket does not count against concurrency), the instance is kept from idling out until
   * release(), and a drain does not wait for it: the instance, retired, closes it with 1001.
   */
  upgraded(): void;
  /** The request failed on the instance's connection (refused, reset, closed unanswered): the slot goes back and the instance is checked; it leaves the pool only if it fails its health check. */
  fail(): void;
  /**
   * After fail(): how the instance ended, if it did, as its driver reported (reason "oom": it
   * was stopped for going over its memory limit). The exit notice may come just after the
   * connection closed, so this waits for it, at most EXIT_NOTICE_MS; undefined when the
   * instance still answers its health check or no notice came.
   */
  exited(): Promise<InstanceExit | undefined>;
}

/** How an instance ended, as its driver reported it. */
export interface InstanceExit {
  /** "exited", "killed", "oom" (see ExitInfo). */
  reason: string;
  code: number | null;
  /** The instance's memory limit, MiB: what an "oom" went over. */
  memoryMb: number;
}

export interface InstanceSnapshot {
  id: string;
  state: "starting" | "ready" | "stopping";
  inFlight: number;
  /** WebSockets open on it (they take no request slot). */
  websockets: number;
  origin: StartKind;
  ageMs: number;
  idleMs: number;
  served: number;
  /** Its limit, MiB. */
  memoryMb: number;
  /** What the memory budget counts it at, MiB: resident + headroom once measured (at most its limit). */
  countedMb: number;
  /** Resident memory last measured, MiB. */
  residentMb?: number;
  /** Unix socket of the instance (local drivers), for tools that reach it directly (bench). */
  socketPath?: string;
}

export interface PoolSnapshot {
  function: string;
  version: number;
  draining: boolean;
  inFlight: number;
  queued: number;
  desired: number;
  instances: InstanceSnapshot[];
}

export interface StartCounts {
  warm: number;
  cell: number;
  cold: number;
}
