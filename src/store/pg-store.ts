/**
 * The Postgres store (issue 15: several forge nodes sharing one metadata database):
 * drizzle-orm over Bun's built-in client (`SQL` from "bun"), with the semantics of the SQLite
 * store (sqlite-store.ts) method for method. What SQLite got from running every call
 * synchronously in one process, here comes from the database: row locks and transactions
 * wherever two nodes could otherwise interleave (version numbering, activation, deletion).
 */
import { SQL as BunSQL } from "bun";
import { and, desc, eq, gte, inArray, lt, sql, type SQL } from "drizzle-orm";
import { drizzle, type BunSQLDatabase } from "drizzle-orm/bun-sql";
import type { FunctionConfig } from "../build/function-config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { migratePostgres } from "./pg-migrate.ts";
import * as schema from "./pg-schema.ts";
import { artifacts, functions, invocationBatches, invocations, nodes, schedules, settings, versions } from "./pg-schema.ts";
import { decodeRecordColumns } from "./record-batch.ts";
import type {
  AsyncFunctionRepo,
  AsyncInvocationRepo,
  AsyncScheduleRepo,
  AsyncStore,
  AsyncVersionRepo,
  ClusterStore,
  FunctionRecord,
  InvocationQuery,
  InvocationRecord,
  NewVersion,
  NodeRecord,
  RecordBatch,
  ScheduleRecord,
  SharedRepo,
  VersionRecord,
} from "./types.ts";

/** Rows per multi-row INSERT of invocation records (18 columns x 500 = 9000 parameters, under Postgres' 65535). */
const ROWS_PER_INSERT = 500;

/** Batches fetched per round trip while list() decodes the newest first. */
const BATCHES_PER_PAGE = 32;

/** As in sqlite-store.ts: invocation lists are for humans and dashboards. */
const DEFAULT_INVOCATION_LIMIT = 100;
const MAX_INVOCATION_LIMIT = 10_000;

type Db = BunSQLDatabase<typeof schema>;
type Live = () => Db;

/**
 * Opens the Postgres metadata database at `url` (postgres://user:pass@host:port/db), first
 * bringing its schema up to date (migratePostgres: safe when several nodes start at once).
 */
export async function openPgStore(url: string): Promise<ClusterStore> {
  await migratePostgres(url);
  const client = new BunSQL(url);
  const db: Db = drizzle({ client, schema });
  let closed = false;
  const live: Live = () => {
    if (closed) throw new ForgeError(ErrorCode.Disposed, 500, "the store is closed");
    return db;
  };
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await client.close();
  };
  return {
    functions: functionRepo(live),
    versions: versionRepo(live),
    invocations: invocationRepo(live),
    schedules: scheduleRepo(live),
    shared: sharedRepo(live),
    close,
    [Symbol.asyncDispose]: close,
  };
}

// --- internal ---

/**
 * A config as a jsonb value. Bun's client JSON-encodes a parameter bound to a jsonb column
 * a second time, so drizzle's own mapping would store a JSON *string* (jsonb_typeof 'string')
 * that only drizzle could read back; sent as text and cast, it is stored as the object.
 */
function jsonb(config: FunctionConfig): FunctionConfig {
  return sql`cast(${JSON.stringify(config)} as text)::jsonb` as unknown as FunctionConfig;
}

/** The columns of a FunctionRecord (functions.last_version is internal bookkeeping). */
const functionColumns = {
  name: functions.name,
  activeVersion: functions.activeVersion,
  config: functions.config,
  createdAt: functions.createdAt,
  updatedAt: functions.updatedAt,
};

function functionRepo(live: Live): AsyncFunctionRepo {
  const get = async (name: string): Promise<FunctionRecord | undefined> =>
    (await live().select(functionColumns).from(functions).where(eq(functions.name, name)))[0];

  return {
    get,
    list: async () => await live().select(functionColumns).from(functions).orderBy(desc(functions.createdAt), functions.name),
    async ensure(name, config) {
      const now = Date.now();
      await live()
        .insert(functions)
        .values({ name, activeVersion: null, config: jsonb(config), createdAt: now, updatedAt: now })
        .onConflictDoNothing();
      return mustGet(await get(name), name);
    },
    async updateConfig(name, config) {
      const rows = await live()
        .update(functions)
        .set({ config: jsonb(config), updatedAt: Date.now() })
        .where(eq(functions.name, name))
        .returning(functionColumns);
      return mustGet(rows[0], name);
    },
    async delete(name) {
      return await live().transaction(async (tx) => {
        // The function row first, locked: a deploy racing the delete (versions.create
        // updates this row) waits for it, then finds no function.
        const gone = await tx.delete(functions).where(eq(functions.name, name)).returning({ name: functions.name });
        await tx.delete(invocations).where(eq(invocations.function, name));
        await tx.delete(invocationBatches).where(eq(invocationBatches.function, name));
        await tx.delete(schedules).where(eq(schedules.function, name));
        // Versions went by ON DELETE CASCADE; deleted explicitly anyway, as in sqlite-store.ts.
        await tx.delete(versions).where(eq(versions.function, name));
        return gone.length > 0;
      });
    },
  };
}

function versionRepo(live: Live): AsyncVersionRepo {
  const get = async (fn: string, version: number): Promise<VersionRecord | undefined> =>
    (
      await live()
        .select()
        .from(versions)
        .where(and(eq(versions.function, fn), eq(versions.version, version)))
    )[0];

  return {
    get,
    list: async (fn) => await live().select().from(versions).where(eq(versions.function, fn)).orderBy(desc(versions.version)),
    async create(fn, v: NewVersion) {
      // The number comes from the counter on the function row (never reused after a
      // discard, as in sqlite-store.ts). The UPDATE ... RETURNING takes the row's lock until
      // the transaction ends, so two nodes deploying at once get consecutive numbers: the
      // second waits, then increments the first's committed value.
      return await live().transaction(async (tx) => {
        const [counter] = await tx
          .update(functions)
          .set({ lastVersion: sql`${functions.lastVersion} + 1` })
          .where(eq(functions.name, fn))
          .returning({ n: functions.lastVersion });
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
        await tx.insert(versions).values({ ...record, config: jsonb(v.config) });
        return record;
      });
    },
    async activate(fn, version) {
      return await live().transaction(async (tx) => {
        // Lock the function row: two activations at once (a rollback on one node, a deploy
        // on another) run one after the other, so exactly one version ends up active.
        await tx.select({ name: functions.name }).from(functions).where(eq(functions.name, fn)).for("update");
        const [target] = await tx
          .select()
          .from(versions)
          .where(and(eq(versions.function, fn), eq(versions.version, version)));
        if (!target) {
          const known = (
            await tx
              .select({ version: versions.version })
              .from(versions)
              .where(eq(versions.function, fn))
              .orderBy(desc(versions.version))
              .limit(10)
          ).map((r) => r.version);
          throw new ForgeError(ErrorCode.VersionNotFound, 404, `function "${fn}" has no version ${version}`, {
            hint: known.length
              ? `known versions (newest first): ${known.join(", ")}; see \`forge versions ${fn}\``
              : `"${fn}" has no versions yet; deploy it with \`forge deploy\``,
          });
        }
        await tx
          .update(versions)
          .set({ active: sql`(${versions.version} = ${version})` })
          .where(and(eq(versions.function, fn), sql`(${versions.active} or ${versions.version} = ${version})`));
        await tx
          .update(functions)
          .set({ activeVersion: version, config: jsonb(target.config), updatedAt: Date.now() })
          .where(eq(functions.name, fn));
        return { ...target, active: true };
      });
    },
    async setImage(fn, version, image) {
      await live()
        .update(versions)
        .set({ image })
        .where(and(eq(versions.function, fn), eq(versions.version, version)));
    },
    async settle(fn, version, outcome) {
      await live()
        .update(versions)
        .set(
          outcome.status === "ready"
            ? { status: "ready", error: null, ...(outcome.config ? { config: jsonb(outcome.config) } : {}) }
            : { status: "failed", error: outcome.error },
        )
        .where(and(eq(versions.function, fn), eq(versions.version, version)));
    },
    async discard(fn, version) {
      // One statement deletes only an inactive version, so an activation racing the discard
      // cannot lose its version; what is left afterwards says why nothing was deleted.
      const deleted = await live()
        .delete(versions)
        .where(and(eq(versions.function, fn), eq(versions.version, version), eq(versions.active, false)))
        .returning({ version: versions.version });
      if (deleted.length > 0) return;
      const existing = await get(fn, version);
      if (existing?.active) {
        throw new ForgeError(ErrorCode.Conflict, 409, `version ${version} of "${fn}" is active and cannot be discarded`, {
          hint: "activate another version first (`forge rollback`), or delete the function",
        });
      }
    },
  };
}

/** A record of the tab-separated lines that batches held before they held columns (read only; see sqlite-store.ts). */
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

/** Records of a function from its batches, newest first, filtered, at most `limit`: pages of batches until enough. */
async function readBatches(db: Db, fn: string, query: InvocationQuery, limit: number): Promise<InvocationRecord[]> {
  const out: InvocationRecord[] = [];
  if (limit <= 0) return out;
  let before: number | undefined;
  for (;;) {
    const where: SQL[] = [eq(invocationBatches.function, fn), gte(invocationBatches.lastAt, query.since ?? 0)];
    if (before !== undefined) where.push(lt(invocationBatches.seq, before));
    const page = await db
      .select({ seq: invocationBatches.seq, lines: invocationBatches.lines, data: invocationBatches.data })
      .from(invocationBatches)
      .where(and(...where))
      .orderBy(desc(invocationBatches.seq))
      .limit(BATCHES_PER_PAGE);
    for (const row of page) {
      const records = row.data ? decodeRecordColumns(fn, new Uint8Array(row.data)) : row.lines.split("\n").map((line) => decodeRecordLine(fn, line));
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
    if (page.length < BATCHES_PER_PAGE) return out;
    before = page[page.length - 1]?.seq;
  }
}

function invocationRepo(live: Live): AsyncInvocationRepo {
  return {
    async appendBatches(list: RecordBatch[]) {
      const db = live();
      if (list.length === 0) return;
      await db.insert(invocationBatches).values(
        list.map((b) => ({ function: b.function, firstAt: b.firstAt, lastAt: b.lastAt, count: b.count, lines: "", data: Buffer.from(b.data) })),
      );
    },
    async insertMany(records) {
      const db = live();
      if (records.length === 0) return;
      // One transaction, as in SQLite: the batch goes in whole or not at all. ON CONFLICT DO
      // NOTHING: a client may send the same x-forge-request-id twice; the first record wins.
      await db.transaction(async (tx) => {
        for (let i = 0; i < records.length; i += ROWS_PER_INSERT) {
          await tx.insert(invocations).values(records.slice(i, i + ROWS_PER_INSERT)).onConflictDoNothing();
        }
      });
    },
    async insert(record) {
      await live().insert(invocations).values(record);
    },
    async update(id, patch) {
      // Callers patch progress (state, attempts, result); updatedAt follows unless given.
      await live()
        .update(invocations)
        .set({ ...patch, updatedAt: patch.updatedAt ?? Date.now() })
        .where(eq(invocations.id, id));
    },
    get: async (id) => (await live().select().from(invocations).where(eq(invocations.id, id)))[0],
    async list(fn, query: InvocationQuery = {}) {
      const db = live();
      const where: SQL[] = [eq(invocations.function, fn)];
      if (query.status !== undefined) where.push(eq(invocations.status, query.status));
      if (query.kind !== undefined) where.push(eq(invocations.kind, query.kind));
      if (query.state !== undefined) where.push(eq(invocations.state, query.state));
      if (query.since !== undefined) where.push(gte(invocations.createdAt, query.since));
      const limit = Math.min(Math.max(Math.trunc(query.limit ?? DEFAULT_INVOCATION_LIMIT), 0), MAX_INVOCATION_LIMIT);
      const rows: InvocationRecord[] =
        limit === 0
          ? []
          : await db
              .select()
              .from(invocations)
              .where(and(...where))
              // No rowid here: ties within a millisecond are broken by id, deterministically
              // though not in insertion order as on SQLite.
              .orderBy(desc(invocations.createdAt), desc(invocations.id))
              .limit(limit);
      // Records of proxied requests live in batches: merge both, newest first.
      const fromBatches = await readBatches(db, fn, query, limit);
      if (fromBatches.length === 0) return rows;
      return [...rows, ...fromBatches].sort((a, b) => b.createdAt - a.createdAt).slice(0, limit);
    },
    async prune(before) {
      const db = live();
      await db.delete(invocationBatches).where(lt(invocationBatches.lastAt, before));
      await db
        .delete(invocations)
        .where(and(lt(invocations.updatedAt, before), inArray(invocations.state, ["done", "succeeded", "failed", "dead"])));
    },
  };
}

function scheduleRepo(live: Live): AsyncScheduleRepo {
  return {
    async create(s) {
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
      const inserted = await live().insert(schedules).values(record).onConflictDoNothing().returning({ id: schedules.id });
      if (inserted.length === 0) {
        throw new ForgeError(ErrorCode.Conflict, 409, `a schedule with id "${s.id}" already exists`, {
          hint: "schedule ids must be unique; let forge generate one",
        });
      }
      return record;
    },
    get: async (id) => (await live().select().from(schedules).where(eq(schedules.id, id)))[0],
    async list(fn) {
      const q = live().select().from(schedules);
      const filtered = fn === undefined ? q : q.where(eq(schedules.function, fn));
      // Ties within a millisecond by id (SQLite breaks them by insertion order).
      return await filtered.orderBy(desc(schedules.createdAt), desc(schedules.id));
    },
    async recordRun(id, patch) {
      // Counters are incremented in SQL so concurrent ticks (on any node) cannot lose an update.
      const set =
        "skipped" in patch
          ? { skipped: sql`${schedules.skipped} + 1` }
          : { runs: sql`${schedules.runs} + 1`, lastRunAt: patch.ranAt, lastStatus: patch.status };
      await live().update(schedules).set(set).where(eq(schedules.id, id));
    },
    delete: async (id) => (await live().delete(schedules).where(eq(schedules.id, id)).returning({ id: schedules.id })).length > 0,
    deleteForFunction: async (fn) => (await live().delete(schedules).where(eq(schedules.function, fn)).returning({ id: schedules.id })).length,
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

/** An artifact no version refers to is kept this long (a deploy stores its artifact before its version row). */
const ARTIFACT_GRACE_MS = 60 * 60_000;

function sharedRepo(live: Live): SharedRepo {
  return {
    async putArtifact(digest, data) {
      await live()
        .insert(artifacts)
        .values({ digest, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength), bytes: data.byteLength, createdAt: Date.now() })
        .onConflictDoNothing();
    },
    async getArtifact(digest) {
      const row = (await live().select({ data: artifacts.data }).from(artifacts).where(eq(artifacts.digest, digest)))[0];
      return row ? new Uint8Array(row.data) : undefined;
    },
    async hasArtifact(digest) {
      // A deploy that finds its artifact here stores no copy, and its version row comes a
      // moment later: the artifact's grace starts again, so no prune meanwhile takes it.
      const found = await live().update(artifacts).set({ createdAt: Date.now() }).where(eq(artifacts.digest, digest)).returning({ digest: artifacts.digest });
      return found.length > 0;
    },
    async pruneArtifacts() {
      const gone = await live()
        .delete(artifacts)
        .where(and(lt(artifacts.createdAt, Date.now() - ARTIFACT_GRACE_MS), sql`not exists (select 1 from ${versions} where ${versions.digest} = ${artifacts.digest})`))
        .returning({ digest: artifacts.digest });
      return gone.length;
    },
    async setting(key, initial) {
      await live().insert(settings).values({ key, value: initial }).onConflictDoNothing();
      const row = (await live().select({ value: settings.value }).from(settings).where(eq(settings.key, key)))[0];
      if (!row) throw new ForgeError(ErrorCode.Internal, 500, `the setting ${key} vanished as it was written`);
      return row.value;
    },
    async heartbeat(node: NodeRecord) {
      await live()
        .insert(nodes)
        .values(node)
        .onConflictDoUpdate({ target: nodes.id, set: { url: node.url, driver: node.driver, version: node.version, startedAt: node.startedAt, heartbeatAt: node.heartbeatAt } });
    },
    async nodes(since) {
      return await live().select().from(nodes).where(gte(nodes.heartbeatAt, since)).orderBy(nodes.startedAt, nodes.id);
    },
    async removeNode(id) {
      await live().delete(nodes).where(eq(nodes.id, id));
    },
  };
}
