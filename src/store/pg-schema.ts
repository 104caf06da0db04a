/**
 * The metadata schema on Postgres (issue 15: several nodes on one database), table for table
 * the SQLite one of schema.ts. `drizzle-kit generate --config drizzle-pg.config.ts` writes
 * its migrations in /drizzle-pg, which migratePostgres (pg-migrate.ts) applies at start.
 *
 * Differences from SQLite, each for Postgres' sake: epoch milliseconds are bigint (as numbers:
 * they stay below 2^53), configs are jsonb, booleans are boolean, batch data is bytea, and
 * the batch sequence is an identity column.
 */
import { bigint, boolean, customType, doublePrecision, foreignKey, index, integer, jsonb, pgTable, primaryKey, text } from "drizzle-orm/pg-core";
import type { FunctionConfig } from "../build/function-config.ts";
import type { InvocationRecord, ScheduleRecord, StartKind, VersionStatus } from "./types.ts";

/** Epoch milliseconds. */
const ms = (name: string) => bigint(name, { mode: "number" });

const bytea = customType<{ data: Buffer; driverData: Buffer }>({
  dataType: () => "bytea",
});

export const functions = pgTable(
  "functions",
  {
    name: text("name").primaryKey(),
    activeVersion: integer("active_version"),
    /** Highest version number ever handed out, so a discarded version's number is never reused. */
    lastVersion: integer("last_version").notNull().default(0),
    config: jsonb("config").$type<FunctionConfig>().notNull(),
    createdAt: ms("created_at").notNull(),
    updatedAt: ms("updated_at").notNull(),
  },
  (t) => [index("functions_created_at_idx").on(t.createdAt)],
);

export const versions = pgTable(
  "versions",
  {
    function: text("function").notNull(),
    version: integer("version").notNull(),
    digest: text("digest").notNull(),
    config: jsonb("config").$type<FunctionConfig>().notNull(),
    artifact: text("artifact").notNull(),
    image: text("image"),
    active: boolean("active").notNull().default(false),
    status: text("status").$type<VersionStatus>().notNull().default("ready"),
    error: text("error"),
    createdAt: ms("created_at").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.function, t.version] }),
    foreignKey({ columns: [t.function], foreignColumns: [functions.name], name: "versions_function_fk" }).onDelete("cascade"),
  ],
);

export const invocations = pgTable(
  "invocations",
  {
    id: text("id").primaryKey(),
    function: text("function").notNull(),
    version: integer("version").notNull(),
    instance: text("instance"),
    start: text("start").$type<StartKind>(),
    kind: text("kind").$type<InvocationRecord["kind"]>().notNull(),
    state: text("state").$type<InvocationRecord["state"]>().notNull(),
    status: integer("status"),
    attempts: integer("attempts").notNull().default(0),
    // Fractions of a millisecond, as measured (SQLite keeps them in its integer columns too).
    queueWaitMs: doublePrecision("queue_wait_ms"),
    durationMs: doublePrecision("duration_ms"),
    bytesIn: bigint("bytes_in", { mode: "number" }).notNull().default(0),
    bytesOut: bigint("bytes_out", { mode: "number" }).notNull().default(0),
    payload: text("payload"),
    result: text("result"),
    error: text("error"),
    createdAt: ms("created_at").notNull(),
    updatedAt: ms("updated_at").notNull(),
  },
  (t) => [index("invocations_function_created_at_idx").on(t.function, t.createdAt)],
);

export const invocationBatches = pgTable(
  "invocation_batches",
  {
    seq: bigint("seq", { mode: "number" }).primaryKey().generatedAlwaysAsIdentity(),
    function: text("function").notNull(),
    firstAt: ms("first_at").notNull(),
    lastAt: ms("last_at").notNull(),
    count: integer("count").notNull(),
    lines: text("lines").notNull(),
    data: bytea("data"),
  },
  (t) => [index("invocation_batches_function_last_at_idx").on(t.function, t.lastAt)],
);

export const schedules = pgTable(
  "schedules",
  {
    id: text("id").primaryKey(),
    function: text("function").notNull(),
    cron: text("cron").notNull(),
    timezone: text("timezone"),
    payload: text("payload"),
    overlap: text("overlap").$type<ScheduleRecord["overlap"]>().notNull().default("skip"),
    runs: integer("runs").notNull().default(0),
    skipped: integer("skipped").notNull().default(0),
    lastRunAt: ms("last_run_at"),
    lastStatus: integer("last_status"),
    createdAt: ms("created_at").notNull(),
  },
  (t) => [index("schedules_function_idx").on(t.function)],
);

// --- what only several nodes need (cluster.ts) ---

/**
 * Artifacts by digest: a version's folder as a gzipped tar, written once by the node that
 * took the deploy, read by every node that lacks it (DESIGN §9: metadata and artifacts in Postgres).
 */
export const artifacts = pgTable("artifacts", {
  digest: text("digest").primaryKey(),
  data: bytea("data").notNull(),
  bytes: integer("bytes").notNull(),
  createdAt: ms("created_at").notNull(),
});

/** Settings the cluster shares, one row each (the control plane's API key). */
export const settings = pgTable("settings", {
  key: text("key").primaryKey(),
  value: text("value").notNull(),
});

/** The forge nodes, each refreshing its heartbeat; one whose heartbeat stopped has dropped out. */
export const nodes = pgTable("nodes", {
  id: text("id").primaryKey(),
  url: text("url").notNull(),
  driver: text("driver").notNull(),
  version: text("version").notNull(),
  startedAt: ms("started_at").notNull(),
  heartbeatAt: ms("heartbeat_at").notNull(),
});
