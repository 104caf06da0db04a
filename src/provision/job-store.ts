/**
 * Where provisioning jobs live: the JobStore interface and its in-process implementation
 * (optionally saved to a file, so that the embedded default survives a restart and never
 * forgets a running database). The Redis one is in redis-job-store.ts.
 *
 * Rules every store keeps: records of live databases never expire; failed and deleted ones
 * expire after the TTL; status changes are compare-and-set on the current status, so a
 * DELETE that lands while the worker provisions ends `deleted`, never overwritten by `ready`.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { applyPatch, EXPIRING, type JobPatch, type JobStatus, type ProvisionJob } from "./job.ts";

export interface JobPage {
  /** Newest first. */
  jobs: ProvisionJob[];
  /** Pass as `cursor` for the next page; null on the last one. */
  nextCursor: string | null;
}

export type Transition = { ok: true; job: ProvisionJob } | { ok: false; job: ProvisionJob | undefined };

export interface JobStore extends AsyncDisposable {
  /** Adds a new job; it must not exist. */
  create(job: ProvisionJob): Promise<void>;
  get(id: string): Promise<ProvisionJob | undefined>;
  list(options?: { limit?: number; cursor?: string }): Promise<JobPage>;
  /**
   * Applies `patch` when the job's status is one of `from` (compare-and-set, atomic);
   * `ok: false` carries the job as it is (undefined when it does not exist).
   */
  transition(id: string, from: readonly JobStatus[], patch: JobPatch): Promise<Transition>;
  close(): Promise<void>;
}

export interface MemoryJobStoreOptions {
  /** How long failed and deleted jobs are kept, ms. */
  ttlMs: number;
  /** A JSON file (mode 0600: it holds passwords) the store loads at start and rewrites on each change. */
  file?: string;
  /** For tests. */
  now?: () => number;
}

export function createMemoryJobStore(options: MemoryJobStoreOptions): JobStore {
  return new MemoryJobStore(options);
}

// --- internal ---

interface Slot {
  job: ProvisionJob;
  /** Epoch ms; absent while the job is live. */
  expiresAt?: number;
}

class MemoryJobStore implements JobStore {
  private readonly jobs = new Map<string, Slot>();
  private readonly now: () => number;

  constructor(private readonly o: MemoryJobStoreOptions) {
    this.now = o.now ?? Date.now;
    if (o.file && existsSync(o.file)) {
      const saved = JSON.parse(readFileSync(o.file, "utf8")) as Slot[];
      for (const s of saved) this.jobs.set(s.job.id, s);
    }
  }

  async create(job: ProvisionJob): Promise<void> {
    if (this.jobs.has(job.id)) throw new Error(`job ${job.id} exists`);
    this.jobs.set(job.id, { job: structuredClone(job) });
    this.save();
  }

  async get(id: string): Promise<ProvisionJob | undefined> {
    const s = this.live(id);
    return s ? structuredClone(s.job) : undefined;
  }

  async list(options: { limit?: number; cursor?: string } = {}): Promise<JobPage> {
    const limit = options.limit ?? 20;
    const ids = [...this.jobs.keys()].filter((id) => (options.cursor === undefined || id < options.cursor) && this.live(id)).sort().reverse();
    const page = ids.slice(0, limit);
    const jobs = page.flatMap((id) => {
      const s = this.jobs.get(id);
      return s ? [structuredClone(s.job)] : [];
    });
    return { jobs, nextCursor: ids.length > limit ? (page[page.length - 1] ?? null) : null };
  }

  async transition(id: string, from: readonly JobStatus[], patch: JobPatch): Promise<Transition> {
    const s = this.live(id);
    if (!s) return { ok: false, job: undefined };
    if (!from.includes(s.job.status)) return { ok: false, job: structuredClone(s.job) };
    const job = applyPatch(s.job, patch, new Date(this.now()));
    this.jobs.set(id, EXPIRING.includes(job.status) ? { job, expiresAt: this.now() + this.o.ttlMs } : { job });
    this.save();
    return { ok: true, job: structuredClone(job) };
  }

  async close(): Promise<void> {}

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private live(id: string): Slot | undefined {
    const s = this.jobs.get(id);
    if (s?.expiresAt !== undefined && s.expiresAt <= this.now()) {
      this.jobs.delete(id);
      this.save();
      return undefined;
    }
    return s;
  }

  private save(): void {
    if (!this.o.file) return;
    const tmp = `${this.o.file}.tmp`;
    writeFileSync(tmp, JSON.stringify([...this.jobs.values()]), { mode: 0o600 });
    renameSync(tmp, this.o.file);
  }
}
