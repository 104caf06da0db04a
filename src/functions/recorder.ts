/**
 * Invocation records are written in batches off the request path: the hot path only
 * pushes an object onto an array; a timer flushes it in one transaction.
 */
import type { ConsolaInstance } from "consola";
import type { InvocationRecord, InvocationRepo } from "../store/index.ts";

export interface RecorderOptions {
  repo: InvocationRepo;
  logger: ConsolaInstance;
  /** Flush at least this often, ms. Default 50: records that die young cost the GC least. */
  flushEveryMs?: number;
  /** Flush at once past this many pending records. Default 512. */
  maxPending?: number;
  /** false drops every record (FORGE_TELEMETRY=off). Default true. */
  enabled?: boolean;
}

export class InvocationRecorder implements AsyncDisposable {
  private pending: InvocationRecord[] = [];
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly flushEveryMs: number;
  private readonly maxPending: number;
  private readonly listeners = new Set<(r: InvocationRecord) => void>();

  constructor(private readonly options: RecorderOptions) {
    this.flushEveryMs = options.flushEveryMs ?? 50;
    this.maxPending = options.maxPending ?? 512;
  }

  record(r: InvocationRecord): void {
    if (this.options.enabled === false) return;
    this.pending.push(r);
    for (const l of this.listeners) l(r);
    if (this.pending.length >= this.maxPending) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), this.flushEveryMs);
      this.timer.unref?.();
    }
  }

  /** Observers of every record as it is made (metrics). */
  onRecord(listener: (r: InvocationRecord) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    try {
      this.options.repo.insertMany(batch);
    } catch (err) {
      // Records are telemetry: losing a batch must not take the request path down.
      this.options.logger.error(`could not write ${batch.length} invocation records:`, err);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.flush();
  }
}
