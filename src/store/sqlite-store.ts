/**
 * The SQLite store: drizzle-orm over bun:sqlite. Every call is synchronous (bun:sqlite
 * is), so a repository method is one short critical section and never interleaves with
 * another request's writes inside this process.
 */
import { Database } from "bun:sqlite";
import { chmodSync, existsSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { and, desc, eq, gte, inArray, lt, ne, sql, type SQL } from "drizzle-orm";
import { drizzle, type BunSQLiteDatabase } from "drizzle-orm/bun-sqlite";
import { migrate } from "drizzle-orm/bun-sqlite/migrator";
import { ErrorCode, ForgeError } from "../errors.ts";
import * as schema from "./schema.ts";
import { decodeRecordColumns } from "./record-batch.ts";
import { functions, invocationBatches, invocations, schedules, versions } from "./schema.ts";
import type {
  FunctionRecord,
  FunctionRepo,
  InvocationQuery,
  InvocationRecord,
  InvocationRepo,
  NewVersion,
  RecordBatch,
  ScheduleRecord,
  ScheduleRepo,
  Store,
  VersionRecord,
  VersionRepo,
} from "./types.ts";

/** Resolved from this file, not the cwd, so `forge up` works from any folder. */
const MIGRATIONS_FOLDER = join(import.meta.dir, "..", "..", "drizzle");

/** Rows per multi-row INSERT of invocation records (18 columns x 64 = 1152 parameters). */
const ROWS_PER_INSERT = 64;

/** Invocation lists are for humans and dashboards; an unbounded default would scan a busy function's whole history. */
const DEFAULT_INVOCATION_LIMIT = 100;
const MAX_INVOCATION_LIMIT = 10_000;

type Db = BunSQLiteDatabase<typeof schema>;

/**
 * Opens (creating if needed) the SQLite database at `path` and brings its schema up to
 * date. `":memory:"` gives a private in-memory store, for tests.
 */
export function openStore(path: string): Store {
  if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
  const sqlite = new Database(path, { create: true, readwrite: true });
  let closed = false;
  try {
    // Owner only: it holds every function's env. SQLite gives its -wal and -shm files the
    // database's mode; earlier runs may have left them readable.
    if (path !== ":memory:") for (const f of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(f)) chmodSync(f, 0o600);
    sqlite.run("PRAGMA journal_mode = WAL");
    // NORMAL in WAL mode: commits survive a crash of forge, only an OS crash or power loss
    // may roll back the last ones; FULL fsyncs every commit, and the invocation records'
    // commit every 200 ms stalled the request path (measured under wrk).
    sqlite.run("PRAGMA synchronous = NORMAL");
    sqlite.run("PRAGMA busy_timeout = 5000");
    const db: Db = drizzle({ client: sqlite, schema });
    // Migrations run before foreign keys are switched on: drizzle-kit rewrites a changed
    // SQLite table as create-copy-drop, and dropping `functions` with foreign keys on
    // would cascade-delete every version (PRAGMA foreign_keys is a no-op inside the
    // migrator's transaction, so the migration cannot turn them off itself).
    migrate(db, { migrationsFolder: MIGRATIONS_FOLDER });
    sqlite.run("PRAGMA foreign_keys = ON");

    const live = (): Db => {
      if (closed) throw new ForgeError(ErrorCode.Disposed, 500, "the store is closed");
      return db;
    };
    const close = (): void => {
      if (closed) return;
      closed = true;
      sqlite.close();
    };
    return {
      functions: functionRepo(live),
      versions: versionRepo(live),
      invocations: invocationRepo(live, fastInvocationInsert(sqlite, () => closed), batchLines(sqlite, () => closed)),
      schedules: scheduleRepo(live),
      close,
      [Symbol.dispose]: close,
    };
  } catch (err) {
    sqlite.close();
    throw err;
  }
}

// --- internal ---
// (drizzle types bun-sqlite's run() result as void, so counts come from RETURNING.)

type Live = () => Db;

/** The columns of a FunctionRecord (functions.last_version is internal bookkeeping). */
const functionColumns = {
  name: functions.name,
  activeVersion: functions.activeVersion,
  config: functions.config,
  createdAt: functions.createdAt,
  updatedAt: functions.updatedAt,
};

function functionRepo(live: Live): FunctionRepo {
  const get = (name: string): FunctionRecord | undefined =>
    live().select(functionColumns).from(functions).where(eq(functions.name, name)).get();

  return {
    get,
    list: () => live().select(functionColumns).from(functions).orderBy(desc(functions.createdAt), functions.name).all(),
    ensure(name, config) {
      const now = Date.now();
      live()
        .insert(functions)
        .values({ name, activeVersion: null, config, createdAt: now, updatedAt: now })
        .onConflictDoNothing()
        .run();
      return mustGet(get(name), name);
    },
    updateConfig(name, config) {
      const row = live()
        .update(functions)
        .set({ config, updatedAt: Date.now() })
        .where(eq(functions.name, name))
        .returning(functionColumns)
        .get();
      return mustGet(row, name);
    },
    delete(name) {
      return live().transaction(
        (tx) => {
          tx.delete(invocations).where(eq(invocations.function, name)).run();
          tx.delete(invocationBatches).where(eq(invocationBatches.function, name)).run();
          tx.delete(schedules).where(eq(schedules.function, name)).run();
          // Versions go by ON DELETE CASCADE; deleted explicitly anyway so a database
          // opened without foreign keys (the sqlite3 shell) cannot leave orphans behind.
          tx.delete(versions).where(eq(versions.function, name)).run();
          return tx.delete(functions).where(eq(functions.name, name)).returning({ name: functions.name }).get() !== undefined;
        },
        { behavior: "immediate" },
      );
    },
  };
}

function versionRepo(live: Live): VersionRepo {
  const get = (fn: string, version: number): VersionRecord | undefined =>
    live()
      .select()
      .from(versions)
      .where(and(eq(versions.function, fn), eq(versions.version, version)))
      .get();

  return {
    get,
    list: (fn) => live().select().from(versions).where(eq(versions.function, fn)).orderBy(desc(versions.version)).all(),
    create(fn, v: NewVersion) {
      // The number comes from a counter on the function row rather than max(version) + 1
      // over the versions left, so a discarded (failed) deploy's number, which may already
      // name an image tag or artifact, is not handed out again. Without discards the two
      // agree. IMMEDIATE takes the write lock first, so two deploys (in this process or
      // another sharing the file) cannot pick the same number.
      return live().transaction(
        (tx) => {
          const counter = tx
            .update(functions)
            .set({ lastVersion: sql`${functions.lastVersion} + 1` })
            .where(eq(functions.name, fn))
            .returning({ n: functions.lastVersion })
            .get();
          if (!counter) throw functionNotFound(fn);
          const record: VersionRecord = {
            function: fn,
            version: counter.n,
            digest: v.digest,
            config: v.config,
            artifact: v.artifact,
            image: v.image,
            active: false,
            status: "starting",
            error: null,
            createdAt: Date.now(),
          };
          tx.insert(versions).values(record).run();
          return record;
        },
        { behavior: "immediate" },
      );
    },
    activate(fn, version) {
      return live().transaction(
        (tx) => {
          const target = tx
            .select()
            .from(versions)
            .where(and(eq(versions.function, fn), eq(versions.version, version)))
            .get();
          if (!target) {
            const known = tx
              .select({ version: versions.version })
              .from(versions)
              .where(eq(versions.function, fn))
              .orderBy(desc(versions.version))
              .limit(10)
              .all()
              .map((r) => r.version);
            throw new ForgeError(ErrorCode.VersionNotFound, 404, `function "${fn}" has no version ${version}`, {
              hint: known.length
                ? `known versions (newest first): ${known.join(", ")}; see \`forge versions ${fn}\``
                : `"${fn}" has no versions yet; deploy it with \`forge deploy\``,
            });
          }
          tx.update(versions)
            .set({ active: false })
            .where(and(eq(versions.function, fn), ne(versions.version, version), eq(versions.active, true)))
            .run();
          tx.update(versions)
            .set({ active: true })
            .where(and(eq(versions.function, fn), eq(versions.version, version)))
            .run();
          tx.update(functions)
            .set({ activeVersion: version, config: target.config, updatedAt: Date.now() })
            .where(eq(functions.name, fn))
            .run();
          return { ...target, active: true };
        },
        { behavior: "immediate" },
      );
    },
    setImage(fn, version, image) {
      live()
        .update(versions)
        .set({ image })
        .where(and(eq(versions.function, fn), eq(versions.version, version)))
        .run();
    },
    settle(fn, version, outcome) {
      live()
        .update(versions)
        .set(outcome.status === "ready" ? { status: "ready", error: null, ...(outcome.config ? { config: outcome.config } : {}) } : { status: "failed", error: outcome.error })
        .where(and(eq(versions.function, fn), eq(versions.version, version)))
        .run();
    },
    discard(fn, version) {
      const existing = get(fn, version);
      if (!existing) return;
      if (existing.active) {
        throw new ForgeError(ErrorCode.Conflict, 409, `version ${version} of "${fn}" is active and cannot be discarded`, {
          hint: "activate another version first (`forge rollback`), or delete the function",
        });
      }
      live()
        .delete(versions)
        .where(and(eq(versions.function, fn), eq(versions.version, version), eq(versions.active, false)))
        .run();
    },
  };
}

/**
 * The request path's records go in through one prepared statement in one transaction:
 * drizzle's query builder costs tens of microseconds a row, more than the proxying of
 * the request itself (measured with bun --cpu-prof under wrk).
 */
function fastInvocationInsert(sqlite: Database, isClosed: () => boolean): (records: InvocationRecord[]) => void {
  const columns =
    "id, function, version, instance, start, kind, state, status, attempts, queue_wait_ms, duration_ms, bytes_in, bytes_out, payload, result, error, created_at, updated_at";
  const row = `(${new Array(18).fill("?").join(", ")})`;
  // OR IGNORE: a client may send the same x-forge-request-id twice; one duplicate must not lose the batch.
  const statement = (rows: number) => sqlite.prepare(`INSERT OR IGNORE INTO invocations (${columns}) VALUES ${new Array(rows).fill(row).join(", ")}`);
  // Many rows per statement: each run() is a native call with its own overhead (measured:
  // one row per run cost ~13% of the proxy's CPU under wrk; 64 rows per run, ~2%).
  const many = statement(ROWS_PER_INSERT);
  const one = statement(1);
  const params: (string | number | null)[] = [];
  const push = (r: InvocationRecord): void => {
    params.push(r.id, r.function, r.version, r.instance, r.start, r.kind, r.state, r.status, r.attempts, r.queueWaitMs, r.durationMs, r.bytesIn, r.bytesOut, r.payload, r.result, r.error, r.createdAt, r.updatedAt);
  };
  const insertAll = sqlite.transaction((records: InvocationRecord[]) => {
    let i = 0;
    for (; i + ROWS_PER_INSERT <= records.length; i += ROWS_PER_INSERT) {
      params.length = 0;
      for (let j = i; j < i + ROWS_PER_INSERT; j++) push(records[j] as InvocationRecord);
      many.run(...params);
    }
    for (; i < records.length; i++) {
      params.length = 0;
      push(records[i] as InvocationRecord);
      one.run(...params);
    }
  });
  return (records) => {
    if (isClosed()) throw new ForgeError(ErrorCode.Disposed, 500, "the store is closed");
    insertAll(records);
  };
}

/** A record of the tab-separated lines that batches held before they held columns (read only). */
function decodeRecordLine(fn: string, line: string): InvocationRecord | undefined {
  const f = line.split("\t");
  if (f.length < 15) return undefined;
  const num = (v: string | undefined): number | null => (v === undefined || v === "" ? null : Number(v));
  const ms = (v: string | undefined): number | null => (v === undefined || v === "" ? null : Number(v) / 1000);
  return {
    id: f[0] ?? "",
    function: fn,
    version: Number(f[1]),
    instance: f[2] || null,
    start: (f[3] || null) as InvocationRecord["start"],
    kind: f[4] as InvocationRecord["kind"],
    state: f[5] as InvocationRecord["state"],
    status: num(f[6]),
    attempts: Number(f[7]),
    queueWaitMs: ms(f[8]),
    durationMs: ms(f[9]),
    bytesIn: Number(f[10]),
    bytesOut: Number(f[11]),
    payload: null,
    result: null,
    error: f[14] || null,
    createdAt: Number(f[12]),
    updatedAt: f[13] ? Number(f[13]) : Number(f[12]),
  };
}

interface BatchLines {
  append(batches: RecordBatch[]): void;
  /** Records of a function from its batches, newest first, filtered, at most `limit`. */
  read(fn: string, query: InvocationQuery, limit: number): InvocationRecord[];
}

/** Batches of encoded records: one INSERT per function per flush; reads decode the newest first. */
function batchLines(sqlite: Database, isClosed: () => boolean): BatchLines {
  const insert = sqlite.prepare("INSERT INTO invocation_batches (function, first_at, last_at, count, lines, data) VALUES (?, ?, ?, ?, '', ?)");
  const insertAll = sqlite.transaction((batches: RecordBatch[]) => {
    for (const b of batches) insert.run(b.function, b.firstAt, b.lastAt, b.count, b.data);
  });
  const newest = sqlite.prepare<{ lines: string; data: Uint8Array | null }, [string, number]>(
    "SELECT lines, data FROM invocation_batches WHERE function = ? AND last_at >= ? ORDER BY seq DESC",
  );
  const check = (): void => {
    if (isClosed()) throw new ForgeError(ErrorCode.Disposed, 500, "the store is closed");
  };
  return {
    append(batches) {
      check();
      if (batches.length > 0) insertAll(batches);
    },
    read(fn, query, limit) {
      check();
      const out: InvocationRecord[] = [];
      if (limit <= 0) return out;
      for (const row of newest.iterate(fn, query.since ?? 0)) {
        const records = row.data ? decodeRecordColumns(fn, row.data) : row.lines.split("\n").map((line) => decodeRecordLine(fn, line));
        for (let i = records.length - 1; i >= 0; i--) {
          const r = records[i];
          if (!r) continue;
          if (query.status !== undefined && r.status !== query.status) continue;
          if (query.kind !== undefined && r.kind !== query.kind) continue;
          if (query.state !== undefined && r.state !== query.state) continue;
          if (query.since !== undefined && r.createdAt < query.since) continue;
          out.push(r);
          if (out.length >= limit) return out;
        }
      }
      return out;
    },
  };
}

function invocationRepo(live: Live, insertFast: (records: InvocationRecord[]) => void, batches: BatchLines): InvocationRepo {
  return {
    appendBatches(list) {
      batches.append(list);
    },
    insertMany(records) {
      if (records.length === 0) return;
      insertFast(records);
    },
    insert(record) {
      live().insert(invocations).values(record).run();
    },
    update(id, patch) {
      // Callers patch progress (state, attempts, result); updatedAt follows unless given.
      live()
        .update(invocations)
        .set({ ...patch, updatedAt: patch.updatedAt ?? Date.now() })
        .where(eq(invocations.id, id))
        .run();
    },
    get: (id) => live().select().from(invocations).where(eq(invocations.id, id)).get(),
    list(fn, query: InvocationQuery = {}) {
      const where: SQL[] = [eq(invocations.function, fn)];
      if (query.status !== undefined) where.push(eq(invocations.status, query.status));
      if (query.kind !== undefined) where.push(eq(invocations.kind, query.kind));
      if (query.state !== undefined) where.push(eq(invocations.state, query.state));
      if (query.since !== undefined) where.push(gte(invocations.createdAt, query.since));
      const limit = Math.min(Math.max(Math.trunc(query.limit ?? DEFAULT_INVOCATION_LIMIT), 0), MAX_INVOCATION_LIMIT);
      const rows = (
        live()
          .select()
          .from(invocations)
          .where(and(...where))
          // rowid breaks ties between records of the same millisecond in insertion order.
          .orderBy(desc(invocations.createdAt), sql`rowid desc`)
          .limit(limit)
          .all() satisfies InvocationRecord[]
      );
      // Records of proxied requests live in batches: merge both, newest first.
      const fromBatches = batches.read(fn, query, limit);
      if (fromBatches.length === 0) return rows;
      return [...rows, ...fromBatches].sort((a, b) => b.createdAt - a.createdAt).slice(0, limit);
    },
    prune(before) {
      const db = live();
      db.delete(invocationBatches).where(lt(invocationBatches.lastAt, before)).run();
      db.delete(invocations)
        .where(and(lt(invocations.updatedAt, before), inArray(invocations.state, ["done", "succeeded", "failed", "dead"])))
        .run();
    },
  };
}

function scheduleRepo(live: Live): ScheduleRepo {
  return {
    create(s) {
      const record: ScheduleRecord = {
        id: s.id,
        function: s.function,
        cron: s.cron,
        timezone: s.timezone,
        payload: s.payload,
        overlap: s.overlap,
        runs: 0,
        skipped: 0,
        lastRunAt: null,
        lastStatus: null,
        createdAt: Date.now(),
      };
      const inserted = live().insert(schedules).values(record).onConflictDoNothing().returning({ id: schedules.id }).get();
      if (!inserted) {
        throw new ForgeError(ErrorCode.Conflict, 409, `a schedule with id "${s.id}" already exists`, {
          hint: "schedule ids must be unique; let forge generate one",
        });
      }
      return record;
    },
    get: (id) => live().select().from(schedules).where(eq(schedules.id, id)).get(),
    list(fn) {
      const q = live().select().from(schedules);
      const filtered = fn === undefined ? q : q.where(eq(schedules.function, fn));
      return filtered.orderBy(desc(schedules.createdAt), sql`rowid desc`).all();
    },
    recordRun(id, patch) {
      // Counters are incremented in SQL so concurrent ticks cannot lose an update.
      const set =
        "skipped" in patch
          ? { skipped: sql`${schedules.skipped} + 1` }
          : { runs: sql`${schedules.runs} + 1`, lastRunAt: patch.ranAt, lastStatus: patch.status };
      live().update(schedules).set(set).where(eq(schedules.id, id)).run();
    },
    delete: (id) => live().delete(schedules).where(eq(schedules.id, id)).returning({ id: schedules.id }).get() !== undefined,
    deleteForFunction: (fn) => live().delete(schedules).where(eq(schedules.function, fn)).returning({ id: schedules.id }).all().length,
  };
}

function functionNotFound(name: string): ForgeError {
  return new ForgeError(ErrorCode.FunctionNotFound, 404, `function "${name}" does not exist`, {
    hint: "see `forge list` for deployed functions, or deploy it with `forge deploy`",
  });
}

function mustGet(row: FunctionRecord | undefined, name: string): FunctionRecord {
  if (!row) throw functionNotFound(name);
  return row;
}
