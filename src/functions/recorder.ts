/**
 * Invocation records are written in batches off the request path. The hot path copies a
 * record's fields into its function's columns (store/record-batch.ts); every 50 ms the
 * columns are compressed and stored as one row per function. Measured under wrk: a SQLite
 * row per request cost ~3 us of the request path, a tab-separated line per record ~3 us
 * (formatting and SQLite writing 2 MB/s); columns cost well under 1 us.
 *
 * The store is a network database on a cluster: a write that fails keeps its batches, which
 * go again (first, in order) with the next flush, so a short outage loses no record. What is
 * held is bounded; past the bound the oldest batches go, counted.
 */
import type { ConsolaInstance } from "consola";
import { RecordColumns, type AsyncInvocationRepo, type InvocationRecord, type RecordBatch } from "../store/index.ts";

export interface RecorderOptions {
  repo: Pick<AsyncInvocationRepo, "appendBatches">;
  logger: ConsolaInstance;
  /** Flush at least this often, ms. Default 50. */
  flushEveryMs?: number;
  /** Flush at once past this many pending records. Default 4096. */
  maxPending?: number;
  /** false drops every record (FORGE_TELEMETRY=off). Default true. */
  enabled?: boolean;
  /** After a failed write, try again this soon if no record comes to flush sooner, ms. Default 1000. */
  retryEveryMs?: number;
  /** Encoded bytes held while the store does not answer; past it the oldest batches go. Default 64 MiB. */
  maxHeldBytes?: number;
  /** Records held while the store does not answer; past it the oldest batches go. Default 100000. */
  maxHeldRecords?: number;
}

/** Batches per appendBatches call: one INSERT of many rows must stay under Postgres' 65535 parameters. */
const BATCHES_PER_WRITE = 1000;

export class InvocationRecorder implements AsyncDisposable {
  private pending = new Map<string, RecordColumns>();
  /** Records in each function's last batch: the next one's likely size. */
  private readonly lastCounts = new Map<string, number>();
  private total = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly flushEveryMs: number;
  private readonly maxPending: number;
  private readonly listeners = new Set<(r: InvocationRecord) => void>();
  /** Encoded batches not yet written, oldest first (those of failed writes included). */
  private queue: RecordBatch[] = [];
  private queuedBytes = 0;
  private queuedRecords = 0;
  /** Callers of flush() waiting for the write that takes what they flushed. */
  private waiters: (() => void)[] = [];
  private writing = false;
  /** The store failed the last write and has not taken one since. */
  private outage = false;
  /** Records dropped in the current outage (past the bound). */
  private droppedInOutage = 0;
  /** Records dropped because the store was away for too long, since start. */
  dropped = 0;

  constructor(private readonly options: RecorderOptions) {
    this.flushEveryMs = options.flushEveryMs ?? 50;
    this.maxPending = options.maxPending ?? 4096;
  }

  /** false when FORGE_TELEMETRY=off: callers may skip building records at all. */
  get enabled(): boolean {
    return this.options.enabled !== false;
  }

  record(r: InvocationRecord): void {
    if (this.options.enabled === false) return;
    for (const l of this.listeners) l(r);
    let columns = this.pending.get(r.function);
    if (!columns) this.pending.set(r.function, (columns = new RecordColumns(this.lastCounts.get(r.function))));
    columns.add(r);
    if (++this.total >= this.maxPending) void this.flush();
    else if (!this.timer) this.arm(this.flushEveryMs);
  }

  /** Observers of every record as it is made (metrics). */
  onRecord(listener: (r: InvocationRecord) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Writes what is pending (and what earlier writes failed to). Resolves once a write that
   * took it has ended, written or failed; never rejects. Writes run one at a time, in order.
   */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.encodePending();
    if (this.queue.length === 0 && !this.writing) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.waiters.push(resolve);
      if (!this.writing) void this.drain();
    });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.flush();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.queuedRecords > 0) this.options.logger.error(`${this.queuedRecords} invocation records were not written: the store did not answer`);
  }

  // --- internal ---

  private arm(ms: number): void {
    this.timer = setTimeout(() => void this.flush(), ms);
    this.timer.unref?.();
  }

  /** Pending columns into the queue as one encoded batch per function. */
  private encodePending(): void {
    if (this.total === 0) return;
    const pending = this.pending;
    this.pending = new Map();
    const n = this.total;
    this.total = 0;
    try {
      const batches: RecordBatch[] = [];
      this.lastCounts.clear();
      for (const [fn, c] of pending) {
        this.lastCounts.set(fn, Math.ceil(c.count * 1.25));
        batches.push({ function: fn, firstAt: c.firstAt, lastAt: c.lastAt, count: c.count, data: c.encode() });
      }
      for (const b of batches) this.enqueue(b);
      this.bound();
    } catch (err) {
      // Records are telemetry: losing a batch must not take the request path down.
      this.options.logger.error(`could not encode ${n} invocation records:`, err);
    }
  }

  private enqueue(b: RecordBatch): void {
    this.queue.push(b);
    this.queuedBytes += b.data.byteLength;
    this.queuedRecords += b.count;
  }

  /** Drops the oldest batches while more than the bound is held. */
  private bound(): void {
    const maxBytes = this.options.maxHeldBytes ?? 64 * 1024 * 1024;
    const maxRecords = this.options.maxHeldRecords ?? 100_000;
    let n = 0;
    while (this.queue.length > 0 && (this.queuedBytes > maxBytes || this.queuedRecords > maxRecords)) {
      const b = this.queue.shift() as RecordBatch; // length checked above
      this.queuedBytes -= b.data.byteLength;
      this.queuedRecords -= b.count;
      n += b.count;
    }
    if (n === 0) return;
    if (this.droppedInOutage === 0) {
      this.options.logger.warn(`the store has not taken invocation records for a while; dropping the oldest past ${maxRecords} records or ${Math.round(maxBytes / 1024 / 1024)} MiB held (counted)`);
    }
    this.droppedInOutage += n;
    this.dropped += n;
  }

  /** Writes the queue until no caller waits; one write at a time, so batches land in order. */
  private async drain(): Promise<void> {
    this.writing = true;
    try {
      while (this.waiters.length > 0) {
        const waiters = this.waiters;
        this.waiters = [];
        await this.writeQueue();
        for (const w of waiters) w();
      }
    } finally {
      this.writing = false;
    }
  }

  /** Writes every queued batch, oldest first; on a failure what is left stays first in the queue. */
  private async writeQueue(): Promise<void> {
    while (this.queue.length > 0) {
      const chunk = this.queue.splice(0, BATCHES_PER_WRITE);
      let bytes = 0;
      let records = 0;
      for (const b of chunk) {
        bytes += b.data.byteLength;
        records += b.count;
      }
      this.queuedBytes -= bytes;
      this.queuedRecords -= records;
      try {
        await this.options.repo.appendBatches(chunk);
      } catch (err) {
        // Back in front of what came meanwhile, so the order holds; the bound may drop them.
        this.queue = chunk.concat(this.queue);
        this.queuedBytes += bytes;
        this.queuedRecords += records;
        this.bound();
        if (!this.outage) this.options.logger.warn(`could not write ${records} invocation records, holding them to retry:`, err);
        this.outage = true;
        if (!this.timer) this.arm(this.options.retryEveryMs ?? 1000);
        return;
      }
      if (this.outage) {
        this.outage = false;
        const lost = this.droppedInOutage;
        this.droppedInOutage = 0;
        this.options.logger.info(`the store takes invocation records again${lost > 0 ? `; ${lost} were dropped while it did not` : ""}`);
      }
    }
  }
}
