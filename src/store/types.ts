/**
 * What the store offers the rest of forge: repositories over plain records. The drizzle
 * schema behind them is internal to src/store.
 */
import type { FunctionConfig } from "../build/index.ts";

export type StartKind = "warm" | "cell" | "cold";

export interface FunctionRecord {
  name: string;
  /** Version serving traffic; null before the first deploy finished. */
  activeVersion: number | null;
  /** Current config: the active version's snapshot plus PATCHed fields. */
  config: FunctionConfig;
  createdAt: number;
  updatedAt: number;
}

export interface VersionRecord {
  function: string;
  /** 1, 2, 3... per function; never reused, never changed. */
  version: number;
  /** sha256 of the artifact (the bundle, or the build context for docker runtimes). */
  digest: string;
  /** The config as deployed. */
  config: FunctionConfig;
  /** Artifact path relative to the data dir (the bundle file or the unpacked folder). */
  artifact: string;
  /** Image built for this version (docker driver), else null. */
  image: string | null;
  active: boolean;
  /** starting while its first instance is verified; ready once one loaded; failed when none could. */
  status: VersionStatus;
  /** Why it failed (the module's error and first stack frames); null otherwise. */
  error: string | null;
  createdAt: number;
}

export type VersionStatus = "starting" | "ready" | "failed";

export interface NewVersion {
  digest: string;
  config: FunctionConfig;
  artifact: string;
  image: string | null;
}

export interface InvocationRecord {
  id: string;
  function: string;
  version: number;
  instance: string | null;
  start: StartKind | null;
  /** "sync" for HTTP requests, "async" for queued invocations, "schedule" for cron ticks. */
  kind: "sync" | "async" | "schedule";
  /** sync: done; async: queued | running | succeeded | dead. */
  state: "queued" | "running" | "succeeded" | "failed" | "dead" | "done";
  status: number | null;
  attempts: number;
  queueWaitMs: number | null;
  durationMs: number | null;
  bytesIn: number;
  bytesOut: number;
  /** Async: the request body and result / last error (JSON text). */
  payload: string | null;
  result: string | null;
  error: string | null;
  createdAt: number;
  updatedAt: number;
}

export interface FunctionRepo {
  get(name: string): FunctionRecord | undefined;
  list(): FunctionRecord[];
  /** Creates the function record if missing (activeVersion null), else returns it. */
  ensure(name: string, config: FunctionConfig): FunctionRecord;
  updateConfig(name: string, config: FunctionConfig): FunctionRecord;
  /** Deletes the function, its versions and its invocations. */
  delete(name: string): boolean;
}

export interface VersionRepo {
  /** Adds the next version (max + 1, from 1), not active yet. */
  create(fn: string, v: NewVersion): VersionRecord;
  get(fn: string, version: number): VersionRecord | undefined;
  /** Newest first. */
  list(fn: string): VersionRecord[];
  /** Makes one version active (and only it) and sets the function's activeVersion and config. */
  activate(fn: string, version: number): VersionRecord;
  /** Records the image built for a version (set once, before it becomes active). */
  setImage(fn: string, version: number, image: string | null): void;
  /** Removes a version that never became active (a failed build, before any instance ran it). */
  discard(fn: string, version: number): void;
  /** Settles a starting version: ready (with the config it runs with), or failed with why. */
  settle(fn: string, version: number, outcome: { status: "ready"; config?: FunctionConfig } | { status: "failed"; error: string }): void;
}

export interface InvocationQuery {
  limit?: number;
  status?: number;
  kind?: InvocationRecord["kind"];
  state?: InvocationRecord["state"];
  since?: number;
}

/** Records of one function from one flush of the request path, one encoded record a line. */
export interface RecordBatch {
  function: string;
  firstAt: number;
  lastAt: number;
  count: number;
  /** RecordColumns.encode() of the records. */
  data: Uint8Array;
}

export interface InvocationRepo {
  /** Appends the request path's records, one row per function (list() returns them like the rest). */
  appendBatches(batches: RecordBatch[]): void;
  /** Inserts many records in one transaction. */
  insertMany(records: InvocationRecord[]): void;
  insert(record: InvocationRecord): void;
  update(id: string, patch: Partial<Omit<InvocationRecord, "id">>): void;
  get(id: string): InvocationRecord | undefined;
  /** Newest first. */
  list(fn: string, query?: InvocationQuery): InvocationRecord[];
  /**
   * Deletes what retention lets go: batches of the request path whose newest record is older
   * than `before` (epoch ms), and finished records (done, succeeded, failed, dead) last updated
   * before it. Queued and running async invocations stay, however old.
   */
  prune(before: number): void;
}

export interface ScheduleRecord {
  id: string;
  function: string;
  cron: string;
  timezone: string | null;
  /** JSON text sent as the request body, or null. */
  payload: string | null;
  overlap: "skip" | "allow";
  runs: number;
  skipped: number;
  lastRunAt: number | null;
  lastStatus: number | null;
  createdAt: number;
}

export interface ScheduleRepo {
  create(s: Omit<ScheduleRecord, "runs" | "skipped" | "lastRunAt" | "lastStatus" | "createdAt">): ScheduleRecord;
  get(id: string): ScheduleRecord | undefined;
  list(fn?: string): ScheduleRecord[];
  recordRun(id: string, patch: { ranAt: number; status: number | null } | { skipped: true }): void;
  delete(id: string): boolean;
  deleteForFunction(fn: string): number;
}

export interface Store extends Disposable {
  functions: FunctionRepo;
  versions: VersionRepo;
  invocations: InvocationRepo;
  schedules: ScheduleRepo;
  close(): void;
}

/**
 * The repositories with every method answering a Promise: what a store over a network
 * database (Postgres, issue 15) can offer. The SQLite store is wrapped into it by
 * asyncStore (async-sqlite.ts) so both run under one contract suite (store.case.ts).
 */
export type Promisified<T> = {
  [K in keyof T]: T[K] extends (...args: infer A) => infer R ? (...args: A) => Promise<Awaited<R>> : T[K];
};

export interface AsyncFunctionRepo extends Promisified<FunctionRepo> {}
export interface AsyncVersionRepo extends Promisified<VersionRepo> {}
export interface AsyncInvocationRepo extends Promisified<InvocationRepo> {}
export interface AsyncScheduleRepo extends Promisified<ScheduleRepo> {}

export interface AsyncStore extends AsyncDisposable {
  functions: AsyncFunctionRepo;
  versions: AsyncVersionRepo;
  invocations: AsyncInvocationRepo;
  schedules: AsyncScheduleRepo;
  /** Ends the store's connections; idempotent. Calls after it reject with a Disposed error. */
  close(): Promise<void>;
}

/** A forge node of a cluster (several nodes on one Postgres), as it registered itself. */
export interface NodeRecord {
  id: string;
  /** Where the other nodes reach its control API (http://host:port). */
  url: string;
  driver: string;
  /** forge's version on it. */
  version: string;
  startedAt: number;
  heartbeatAt: number;
}

/** What several nodes share beyond the repositories: artifacts by digest, settings, the node list. */
export interface SharedRepo {
  /** Stores a version's artifact (a gzipped tar of its folder) once; a second put of a digest does nothing. */
  putArtifact(digest: string, data: Uint8Array): Promise<void>;
  getArtifact(digest: string): Promise<Uint8Array | undefined>;
  hasArtifact(digest: string): Promise<boolean>;
  /** Removes artifacts no version refers to any more; answers how many went. */
  pruneArtifacts(): Promise<number>;
  /** The setting's value; when it has none yet, `initial` becomes it (first writer wins). */
  setting(key: string, initial: string): Promise<string>;
  /** Records a node's heartbeat (registering it on the first). */
  heartbeat(node: NodeRecord): Promise<void>;
  /** Nodes whose last heartbeat is at or after `since` (epoch ms), oldest first. */
  nodes(since: number): Promise<NodeRecord[]>;
  /** Removes a node (it stopped cleanly, or its heartbeat is long gone). */
  removeNode(id: string): Promise<void>;
}

/** The Postgres store: the repositories every node shares, and the shared rest. */
export interface ClusterStore extends AsyncStore {
  shared: SharedRepo;
}
