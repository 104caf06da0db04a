/**
 * The drizzle schema of forge's metadata database. Internal to src/store: the rest of
 * forge sees the plain records of types.ts. `drizzle-kit generate` reads this file and
 * writes the SQL migrations in /drizzle, which openStore applies at start-up.
 *
 * Timestamps are integer epoch milliseconds (not drizzle's Date modes) because the
 * records carry numbers and the request path should not allocate Dates per row.
 */
import { blob, foreignKey, index, integer, primaryKey, sqliteTable, text } from "drizzle-orm/sqlite-core";
import type { FunctionConfig } from "../build/function-config.ts";
import type { InvocationRecord, ScheduleRecord, StartKind, VersionStatus } from "./types.ts";

export const functions = sqliteTable(
  "functions",
  {
    name: text("name").primaryKey(),
    activeVersion: integer("active_version"),
    /** Highest version number ever handed out, so a discarded version's number is never reused. */
    lastVersion: integer("last_version").notNull().default(0),
    config: text("config", { mode: "json" }).$type<FunctionConfig>().notNull(),
    createdAt: integer("created_at").notNull(),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [index("functions_created_at_idx").on(t.createdAt)],
);

export const versions = sqliteTable(
  "versions",
  {
    function: text("function").notNull(),
    version: integer("version").notNull(),
    digest: text("digest").notNull(),
    config: text("config", { mode: "json" }).$type<FunctionConfig>().notNull(),
    artifact: text("artifact").notNull(),
    image: text("image"),
    active: integer("active", { mode: "boolean" }).notNull().default(false),
    /** ready: it loaded and may serve; failed: no instance of it loaded (kept to show why); starting: being verified. */
    status: text("status").$type<VersionStatus>().notNull().default("ready"),
    /** Why it failed, for `forge versions`. */
    error: text("error"),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [
    primaryKey({ columns: [t.function, t.version] }),
    foreignKey({ columns: [t.function], foreignColumns: [functions.name], name: "versions_function_fk" }).onDelete("cascade"),
  ],
);

// No foreign key to functions: invocation records are written in batches after the
// response, and a batch must not fail because its function was deleted meanwhile.
// functions.delete removes them explicitly.
export const invocations = sqliteTable(
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
    queueWaitMs: integer("queue_wait_ms"),
    durationMs: integer("duration_ms"),
    bytesIn: integer("bytes_in").notNull().default(0),
    bytesOut: integer("bytes_out").notNull().default(0),
    payload: text("payload"),
    result: text("result"),
    error: text("error"),
    createdAt: integer("created_at").notNull(),
    updatedAt: integer("updated_at").notNull(),
  },
  (t) => [index("invocations_function_created_at_idx").on(t.function, t.createdAt)],
);

// Records of proxied requests, written as one row per function per flush (a few per
// second): a row per request cost the warm path ~3 us of SQLite a request. `data` holds
// the records as compressed columns (record-batch.ts); rows written before it existed
// hold one tab-separated record a line in `lines` (read still, never written).
export const invocationBatches = sqliteTable(
  "invocation_batches",
  {
    seq: integer("seq").primaryKey({ autoIncrement: true }),
    function: text("function").notNull(),
    firstAt: integer("first_at").notNull(),
    lastAt: integer("last_at").notNull(),
    count: integer("count").notNull(),
    lines: text("lines").notNull(),
    data: blob("data", { mode: "buffer" }),
  },
  (t) => [index("invocation_batches_function_last_at_idx").on(t.function, t.lastAt)],
);

// No foreign key either: the triggers module owns schedules and may hold one for a
// function that is being deleted; functions.delete removes them explicitly.
export const schedules = sqliteTable(
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
    lastRunAt: integer("last_run_at"),
    lastStatus: integer("last_status"),
    createdAt: integer("created_at").notNull(),
  },
  (t) => [index("schedules_function_idx").on(t.function)],
);
