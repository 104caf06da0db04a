/**
 * Every setting of forge, read from the environment once and validated. This is the only
 * module that reads process.env; everything else receives a Config.
 */
import { readFileSync } from "node:fs";
import { homedir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { ErrorCode, ForgeError } from "./errors.ts";

export type DriverChoice = "auto" | "docker" | "process";
export type LogFormat = "pretty" | "json";
export type ProvisionBackend = "docker" | "shared";
/** Stem cells kept of one runtime: at least min, growing to max while cells are taken fast. */
export interface CellCount {
  min: number;
  max: number;
}

/** Stem cells kept per language runtime: a count, or a range that follows demand. */
export interface StemCells {
  bun: number | CellCount;
  node: number | CellCount;
}

/** The fewest cells kept of a runtime. */
export function cellMin(c: number | CellCount): number {
  return typeof c === "number" ? c : c.min;
}

const STEM_CELL_RUNTIMES = ["bun", "node"] as const;

/** `2` or `2..8` (0 to 64, min <= max); undefined when malformed. */
function parseCellCount(text: string): number | CellCount | undefined {
  const m = /^\s*(\d{1,2})(?:\s*\.\.\s*(\d{1,2}))?\s*$/.exec(text);
  if (!m) return undefined;
  const min = Number(m[1]);
  if (m[2] === undefined) return min <= 64 ? min : undefined;
  const max = Number(m[2]);
  return max <= 64 && min <= max ? { min, max } : undefined;
}

/**
 * `bun=2..8,node=1` (runtimes left out keep none; `N..M` a range that follows demand), or one
 * count or range for every runtime; undefined when malformed.
 */
export function parseStemCells(text: string): StemCells | undefined {
  if (!text.includes("=")) {
    const every = parseCellCount(text);
    return every === undefined ? undefined : { bun: every, node: typeof every === "number" ? every : { ...every } };
  }
  const out: StemCells = { bun: 0, node: 0 };
  const seen = new Set<string>();
  for (const part of text.trim().split(",")) {
    const m = /^\s*([a-z]+)\s*=(.*)$/.exec(part);
    const runtime = m?.[1] as (typeof STEM_CELL_RUNTIMES)[number] | undefined;
    const count = m?.[2] === undefined ? undefined : parseCellCount(m[2]);
    if (count === undefined || runtime === undefined || !STEM_CELL_RUNTIMES.includes(runtime) || seen.has(runtime)) return undefined;
    seen.add(runtime);
    out[runtime] = count;
  }
  return out;
}

/**
 * The default memory budget: half of what the machine has, or of forge's cgroup memory limit
 * when one is set and lower (a container), in MiB, at least 256.
 */
export function machineBudgetMb(): number {
  let total = totalmem();
  for (const file of ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]) {
    try {
      const limit = Number(readFileSync(file, "utf8").trim());
      if (Number.isFinite(limit) && limit > 0 && limit < total) total = limit;
    } catch {
      // not this cgroup layout, or "max"
    }
  }
  return Math.max(256, Math.floor(total / 2 / (1024 * 1024)));
}

export interface Config {
  /** FORGE_PORT: port of the HTTP server, 0 picks a free one. Default 8080. */
  port: number;
  /** FORGE_HOST: interface to listen on. Default 127.0.0.1. */
  host: string;
  /** FORGE_DOMAIN: functions answer at <name>.<domain>. Default localhost. */
  domain: string;
  /** FORGE_DATA_DIR: everything forge writes lives below it. Default ./.forge */
  dataDir: string;
  /**
   * FORGE_DB: the metadata database: a SQLite file path (one node), or a postgres:// URL
   * that several nodes share (then FORGE_REDIS_URL is required too). Default <dataDir>/forge.db
   */
  db: string;
  /** FORGE_NODE_ID: this node's name in a cluster. Default: generated once, kept in <dataDir>/node-id. */
  nodeId: string | undefined;
  /** FORGE_NODE_URL: where the other nodes reach this one's API. Default http://<host>:<port> (127.0.0.1 for 0.0.0.0). */
  nodeUrl: string | undefined;
  /** FORGE_HEARTBEAT: how often a node refreshes its entry in the node list; 5 missed and it drops out. Default 1s. */
  heartbeatMs: number;
  /** FORGE_RECONCILE: how often a node compares every function with the shared store (catching missed notifications). Default 5s. */
  reconcileMs: number;
  /** FORGE_REDIS_URL: Redis for queues and job records; unset means in-process. */
  redisUrl: string | undefined;
  /** FORGE_DRIVER: auto picks docker when its socket answers, else process. */
  driver: DriverChoice;
  /** FORGE_API_KEY: control-plane key; unset means generated once and kept in the data dir. */
  apiKey: string | undefined;
  /**
   * FORGE_STEM_CELLS: generic warm instances kept per runtime, as `bun=2..8,node=1`; a range
   * grows with the rate at which cells are taken (a wave of first requests) and shrinks back
   * when it passes; one count or range alone is every runtime's. Default bun=2..8,node=1..2
   * (node's only where a node binary is found).
   */
  stemCells: StemCells;
  /** FORGE_NODE_BIN: the node binary of runtime "node" (a name is looked up on PATH). Default node. */
  nodeBin: string;
  /** FORGE_NODE_IMAGE: image of the node runtime. Default forge/runtime-node:<version of the node binary>. */
  nodeImage: string | undefined;
  /** FORGE_MEMORY_BUDGET_MB: cap on the memory instances and cells are counted at. Default half the machine's memory (or of forge's cgroup limit). */
  memoryBudgetMb: number;
  /** Whether the budget is the default share of the machine (FORGE_MEMORY_BUDGET_MB unset). */
  memoryBudgetDefault: boolean;
  /**
   * FORGE_MEMORY_ACCOUNTING: what the budget counts. measured: each instance's resident memory
   * plus FORGE_MEMORY_HEADROOM_MB, at most its memoryMb; declared: its memoryMb. Default measured.
   */
  memoryAccounting: "measured" | "declared";
  /** FORGE_MEMORY_HEADROOM_MB: added to an instance's measured memory. Default 16. */
  memoryHeadroomMb: number;
  /** FORGE_MEMORY_SAMPLE: how often instances' memory is measured. Default 500ms. */
  memorySampleMs: number;
  /** FORGE_KEEP_ALIVE_POLICY: fixed (FORGE_KEEP_ALIVE after the last request) or histogram (learns each function's idle times). Default fixed. */
  keepAlivePolicy: "fixed" | "histogram";
  /** FORGE_POLICY_MINUTE: a minute as the keep-alive policies count it (bins, FORGE_KEEP_ALIVE's unit stays wall time); a trace replay compresses it. Default 1m. */
  policyMinuteMs: number;
  /** FORGE_START_TIMEOUT: longest an instance may take to start and load its module (a deploy fails past it). Default 30s. */
  startTimeoutMs: number;
  /** FORGE_REGION: AWS_REGION (and AWS_DEFAULT_REGION) functions see, as on Lambda. Default us-east-1. */
  region: string;
  /** FORGE_KEEP_ALIVE: idle time before an instance is stopped. Default 10m. */
  keepAliveMs: number;
  /** FORGE_QUEUE_TIMEOUT: how long a request may wait for a free slot. Default 30s. */
  queueTimeoutMs: number;
  /** FORGE_MAX_QUEUE: requests waiting per function before 429. Default 1000. */
  maxQueue: number;
  /** DOCKER_HOST: the Docker engine; unset means /var/run/docker.sock. */
  dockerHost: string | undefined;
  /** FORGE_RUNTIME_IMAGE: image of the bun runtime. Default forge/runtime-bun:<bun version>. */
  runtimeImage: string;
  /**
   * FORGE_EGRESS_NETWORK: the Docker network (bridge of the same name) through which instances
   * reach the outside, created when missing; containers on it reach neither each other nor
   * the host. "none": no function gets outbound access. Default forge-egress.
   */
  egressNetwork: string | undefined;
  /** FORGE_POSTGRES_IMAGE: image of provisioned databases. Default forge/postgres:15. */
  postgresImage: string;
  /** FORGE_PROVISION_BACKEND: docker (a container per database) or shared. Default docker. */
  provisionBackend: ProvisionBackend;
  /** FORGE_PG_ADMIN_URL: admin URL of the server the shared backend creates databases on. */
  pgAdminUrl: string | undefined;
  /** FORGE_JOB_TTL: how long failed and deleted provisioning jobs are kept. Default 24h. */
  jobTtlMs: number;
  /** FORGE_PROVISION_CONCURRENCY: provisioning jobs the worker inside `forge up` runs at once; 0 runs none (leave them to `forge worker`). Default 4. */
  provisionConcurrency: number;
  /** FORGE_QUEUE_VISIBILITY: how long a taken queue message may go without an ack or heartbeat before another consumer gets it. Default 30s. */
  queueVisibilityMs: number;
  /** FORGE_REDIS_PREFIX: prefix of every Redis key forge uses (<prefix>:jobs, <prefix>:job:<id>). Default forge. */
  redisPrefix: string;
  /** FORGE_ASYNC_ATTEMPTS: attempts in all for an async invocation. Default 3. */
  asyncAttempts: number;
  /** FORGE_ASYNC_CONCURRENCY: async invocations of one function run at once on a node. Default 4. */
  asyncConcurrency: number;
  /** FORGE_ASYNC_BACKOFF: first retry delay of an async invocation, doubled each attempt, with jitter. Default 1s. */
  asyncBackoffMs: number;
  /** FORGE_TRIGGER_SYNC: how often a node re-reads schedules and functions made by other nodes. Default 10s. */
  triggerSyncMs: number;
  /** FORGE_TELEMETRY: on, or off to skip invocation records, metrics and function logs (to measure their cost). Default on. */
  telemetry: boolean;
  /** Invocation records (and dead letters) older than this are deleted, ms. */
  recordRetentionMs: number;
  /** A client connection with no request in flight (idle keep-alive, or a head that never completes) is closed after this, ms. */
  idleTimeoutMs: number;
  /** FORGE_MAX_CONNECTIONS: client connections open at once; past it a new one gets a 503 and is closed. Default 4096. */
  maxConnections: number;
  /**
   * FORGE_MAX_CONNECTIONS_PER_CLIENT: the same, per client address (IPv6: per /64). 0 (the
   * default): 512, or no cap of its own when forge listens on loopback, where every client
   * comes through a proxy on the same machine and so from one address.
   */
  maxConnectionsPerClient: number;
  /** FORGE_HEAD_TIMEOUT: a request head must arrive whole within this, however it trickles (408 past it), ms. Default 15s. */
  headTimeoutMs: number;
  /** FORGE_BODY_TIMEOUT: the longest pause between request body bytes (408 past it), ms. Default 30s. */
  bodyTimeoutMs: number;
  /** FORGE_SEND_TIMEOUT: a client that takes none of its answer for this long is cut, ms. Default 30s. */
  sendTimeoutMs: number;
  /** FORGE_TRUSTED_PROXIES: addresses and CIDR ranges whose X-Forwarded-For/-Proto/-Host are believed. Default none. */
  trustedProxies: string;
  /** FORGE_LOG_FORMAT: pretty or json. Default pretty. */
  logFormat: LogFormat;
  /** FORGE_MAX_ARCHIVE_MB: unpacked size limit of a deploy. Default 50. */
  maxArchiveBytes: number;
  /** FORGE_MAX_ARCHIVE_FILES: file-count limit of a deploy. Default 10000. */
  maxArchiveFiles: number;
  /** FORGE_MAX_BODY_MB: request body limit of invoke and the data plane. Default 6. */
  maxBodyBytes: number;
  /** FORGE_LOG_RETENTION_MB: function log bytes kept per function. Default 10. */
  logRetentionBytes: number;
}

/** Where the CLI finds forge when nothing else says. */
export const DEFAULT_FORGE_URL = "http://127.0.0.1:8080";

export interface ClientConfig {
  /** FORGE_URL: where the CLI finds forge. Unset: the config file's target, else DEFAULT_FORGE_URL. */
  url: string | undefined;
  /** FORGE_API_KEY. Unset: the config file's target, else the key saved in FORGE_DATA_DIR. */
  apiKey: string | undefined;
  /** FORGE_DATA_DIR, to find a locally generated key. */
  dataDir: string;
  /** $XDG_CONFIG_HOME/forge/config.json (default ~/.config/forge/config.json): the targets of `forge login` and `forge up`. */
  configFile: string;
  /** HOME (default the user's home folder), to show paths as ~/... */
  home: string;
}

type Env = Record<string, string | undefined>;

export function loadConfig(env: Env = process.env, overrides: Partial<Config> = {}): Config {
  const r = new Reader(env);
  const dataDir = resolve(r.str("FORGE_DATA_DIR", "./.forge"));
  const config: Config = {
    port: r.int("FORGE_PORT", 8080, 0, 65535),
    host: r.str("FORGE_HOST", "127.0.0.1"),
    domain: r.match("FORGE_DOMAIN", "localhost", /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/, "a DNS domain such as localhost or fn.example.com"),
    dataDir,
    db: r.str("FORGE_DB", resolve(dataDir, "forge.db")),
    nodeId: r.opt("FORGE_NODE_ID") === undefined ? undefined : r.match("FORGE_NODE_ID", "", /^[a-z0-9][a-z0-9-]{0,62}$/, "lowercase letters, digits and -, at most 63"),
    nodeUrl: r.optUrl("FORGE_NODE_URL", ["http:", "https:"]),
    heartbeatMs: r.duration("FORGE_HEARTBEAT", 1000),
    reconcileMs: r.duration("FORGE_RECONCILE", 5000),
    redisUrl: r.optUrl("FORGE_REDIS_URL", ["redis:", "rediss:"]),
    driver: r.oneOf("FORGE_DRIVER", "auto", ["auto", "docker", "process"] as const),
    apiKey: r.opt("FORGE_API_KEY"),
    stemCells: r.stemCells("FORGE_STEM_CELLS", { bun: { min: 2, max: 8 }, node: { min: 1, max: 2 } }),
    nodeBin: r.str("FORGE_NODE_BIN", "node"),
    nodeImage: r.opt("FORGE_NODE_IMAGE"),
    memoryBudgetMb: r.int("FORGE_MEMORY_BUDGET_MB", machineBudgetMb(), 64, 1 << 24),
    memoryBudgetDefault: r.opt("FORGE_MEMORY_BUDGET_MB") === undefined,
    memoryAccounting: r.oneOf("FORGE_MEMORY_ACCOUNTING", "measured", ["measured", "declared"] as const),
    memoryHeadroomMb: r.int("FORGE_MEMORY_HEADROOM_MB", 16, 0, 1 << 20),
    memorySampleMs: r.duration("FORGE_MEMORY_SAMPLE", 500),
    keepAlivePolicy: r.oneOf("FORGE_KEEP_ALIVE_POLICY", "fixed", ["fixed", "histogram"] as const),
    policyMinuteMs: r.duration("FORGE_POLICY_MINUTE", 60_000),
    startTimeoutMs: r.duration("FORGE_START_TIMEOUT", 30_000),
    region: r.match("FORGE_REGION", "us-east-1", /^[a-z]{2,}(-[a-z0-9]+)+$/, "an AWS region name such as us-east-1 or eu-west-3"),
    keepAliveMs: r.duration("FORGE_KEEP_ALIVE", 10 * 60_000),
    queueTimeoutMs: r.duration("FORGE_QUEUE_TIMEOUT", 30_000),
    maxQueue: r.int("FORGE_MAX_QUEUE", 1000, 0, 1_000_000),
    dockerHost: r.opt("DOCKER_HOST"),
    runtimeImage: r.str("FORGE_RUNTIME_IMAGE", `forge/runtime-bun:${Bun.version}`),
    // At most 15 characters: the bridge device takes the network's name (IFNAMSIZ).
    egressNetwork: noneAsUndefined(r.match("FORGE_EGRESS_NETWORK", "forge-egress", /^[a-z0-9][a-z0-9-]{0,14}$/, 'a network name of at most 15 lowercase letters, digits and -, or "none"')),
    postgresImage: r.str("FORGE_POSTGRES_IMAGE", "forge/postgres:15"),
    provisionBackend: r.oneOf("FORGE_PROVISION_BACKEND", "docker", ["docker", "shared"] as const),
    pgAdminUrl: r.optUrl("FORGE_PG_ADMIN_URL", ["postgres:", "postgresql:"]),
    jobTtlMs: r.duration("FORGE_JOB_TTL", 24 * 3600_000),
    provisionConcurrency: r.int("FORGE_PROVISION_CONCURRENCY", 4, 0, 256),
    queueVisibilityMs: r.duration("FORGE_QUEUE_VISIBILITY", 30_000),
    redisPrefix: r.match("FORGE_REDIS_PREFIX", "forge", /^[A-Za-z0-9][A-Za-z0-9:_.-]{0,63}$/, "letters, digits and : _ . - (e.g. forge or forge-staging)"),
    asyncAttempts: r.int("FORGE_ASYNC_ATTEMPTS", 3, 1, 100),
    asyncConcurrency: r.int("FORGE_ASYNC_CONCURRENCY", 4, 1, 1000),
    asyncBackoffMs: r.duration("FORGE_ASYNC_BACKOFF", 1000),
    triggerSyncMs: r.duration("FORGE_TRIGGER_SYNC", 10_000),
    telemetry: r.oneOf("FORGE_TELEMETRY", "on", ["on", "off"] as const) === "on",
    idleTimeoutMs: r.duration("FORGE_IDLE_TIMEOUT", 75_000),
    maxConnections: r.int("FORGE_MAX_CONNECTIONS", 4096, 1, 1_000_000),
    maxConnectionsPerClient: r.int("FORGE_MAX_CONNECTIONS_PER_CLIENT", 0, 0, 1_000_000),
    headTimeoutMs: r.duration("FORGE_HEAD_TIMEOUT", 15_000),
    bodyTimeoutMs: r.duration("FORGE_BODY_TIMEOUT", 30_000),
    sendTimeoutMs: r.duration("FORGE_SEND_TIMEOUT", 30_000),
    trustedProxies: r.str("FORGE_TRUSTED_PROXIES", ""),
    recordRetentionMs: r.duration("FORGE_RECORD_RETENTION", 7 * 24 * 3600_000),
    logFormat: r.oneOf("FORGE_LOG_FORMAT", "pretty", ["pretty", "json"] as const),
    maxArchiveBytes: r.int("FORGE_MAX_ARCHIVE_MB", 50, 1, 10_000) * 1024 * 1024,
    maxArchiveFiles: r.int("FORGE_MAX_ARCHIVE_FILES", 10_000, 1, 1_000_000),
    maxBodyBytes: r.int("FORGE_MAX_BODY_MB", 6, 1, 1024) * 1024 * 1024,
    logRetentionBytes: r.int("FORGE_LOG_RETENTION_MB", 10, 1, 10_000) * 1024 * 1024,
  };
  // 0 would make the histogram's bins 0 ms wide (every idle time NaN) and the sweep run every 10 ms.
  if (config.policyMinuteMs < 1) r.problem(`FORGE_POLICY_MINUTE=${JSON.stringify(env.FORGE_POLICY_MINUTE)}: expected a duration of at least 1ms`);
  // 0 would measure every instance in a loop with no pause.
  if (config.memorySampleMs < 10) r.problem(`FORGE_MEMORY_SAMPLE=${JSON.stringify(env.FORGE_MEMORY_SAMPLE)}: expected a duration of at least 10ms`);
  if (isPostgresUrl(config.db) && !config.redisUrl) {
    r.problem(`FORGE_DB is a postgres:// URL (several nodes), and FORGE_REDIS_URL is unset: nodes share their async queue, cron leases and change notifications through Redis; set FORGE_REDIS_URL=redis://host:6379`);
  }
  r.throwIfInvalid();
  return { ...config, ...overrides };
}

/** The CLI's config file of targets: $XDG_CONFIG_HOME/forge/config.json, default ~/.config/forge/config.json. */
export function userConfigFile(env: Env = process.env): string {
  const xdg = env.XDG_CONFIG_HOME;
  // The XDG spec: a relative XDG_CONFIG_HOME is invalid and ignored.
  const base = xdg && xdg.startsWith("/") ? xdg : join(env.HOME || homedir(), ".config");
  return join(base, "forge", "config.json");
}

export function loadClientConfig(env: Env = process.env): ClientConfig {
  const r = new Reader(env);
  const config: ClientConfig = {
    url: r.optUrl("FORGE_URL", ["http:", "https:"]),
    apiKey: r.opt("FORGE_API_KEY"),
    dataDir: resolve(r.str("FORGE_DATA_DIR", "./.forge")),
    configFile: userConfigFile(env),
    home: r.opt("HOME") ?? homedir(),
  };
  r.throwIfInvalid();
  return config;
}

/** Does FORGE_DB name a Postgres server (several nodes) rather than a SQLite file? */
export function isPostgresUrl(db: string): boolean {
  return /^postgres(ql)?:\/\//i.test(db);
}

/** Is this process running under CI (tests must fail, not skip, when a service is missing)? */
export function isCI(env: Env = process.env): boolean {
  return env.CI === "true" || env.CI === "1";
}

/** Parses "250ms", "10s", "5m", "1h", "1d" or a bare number of milliseconds. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$/.exec(text.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? "ms";
  const factor = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[unit] ?? 1;
  return Math.round(n * factor);
}

// --- internal ---

/** "none" turns a setting off. */
function noneAsUndefined(value: string): string | undefined {
  return value === "none" ? undefined : value;
}

class Reader {
  private readonly problems: string[] = [];
  constructor(private readonly env: Env) {}

  opt(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v === "" ? undefined : v;
  }
  str(name: string, def: string): string {
    return this.opt(name) ?? def;
  }
  int(name: string, def: number, min: number, max: number): number {
    const v = this.opt(name);
    if (v === undefined) return def;
    const n = Number(v);
    if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
      this.problems.push(`${name}=${JSON.stringify(v)}: expected a whole number from ${min} to ${max}`);
      return def;
    }
    return n;
  }
  stemCells(name: string, def: StemCells): StemCells {
    const v = this.opt(name);
    if (v === undefined) return def;
    const cells = parseStemCells(v);
    if (cells === undefined) this.problems.push(`${name}=${JSON.stringify(v)}: expected counts or ranges per runtime such as bun=2..8,node=1 (0 to 64 each), or one for every runtime`);
    return cells ?? def;
  }
  duration(name: string, def: number): number {
    const v = this.opt(name);
    if (v === undefined) return def;
    const ms = parseDuration(v);
    if (ms === undefined) {
      this.problems.push(`${name}=${JSON.stringify(v)}: expected a duration such as 500ms, 30s, 10m or 1h`);
      return def;
    }
    return ms;
  }
  oneOf<T extends string>(name: string, def: T, allowed: readonly T[]): T {
    const v = this.opt(name);
    if (v === undefined) return def;
    if (!(allowed as readonly string[]).includes(v)) {
      this.problems.push(`${name}=${JSON.stringify(v)}: expected one of ${allowed.join(", ")}`);
      return def;
    }
    return v as T;
  }
  match(name: string, def: string, re: RegExp, what: string): string {
    const v = this.opt(name);
    if (v === undefined) return def;
    if (!re.test(v)) {
      this.problems.push(`${name}=${JSON.stringify(v)}: expected ${what}`);
      return def;
    }
    return v;
  }
  optUrl(name: string, protocols: string[]): string | undefined {
    const v = this.opt(name);
    if (v === undefined) return undefined;
    let ok = false;
    try {
      ok = protocols.includes(new URL(v).protocol);
    } catch {
      ok = false;
    }
    if (!ok) {
      this.problems.push(`${name}: expected a URL starting with ${protocols.map((p) => `${p}//`).join(" or ")}`);
      return undefined;
    }
    return v;
  }
  /** A problem across settings (one alone is fine, together they are not). */
  problem(text: string): void {
    this.problems.push(text);
  }
  throwIfInvalid(): void {
    if (this.problems.length === 0) return;
    throw new ForgeError(ErrorCode.InvalidConfig, 400, `invalid settings:\n  ${this.problems.join("\n  ")}`, {
      hint: "fix or unset these environment variables (see Settings in README.md)",
    });
  }
}
