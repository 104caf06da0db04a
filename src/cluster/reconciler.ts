/**
 * Keeps this node's pools on what the shared store says (DESIGN §9): a change notification
 * converges one function at once; every `everyMs` all of them are looked at again, so a
 * node that missed a message (Redis away, the node partitioned or down) converges anyway.
 * What converging means (fetch the artifact, build the image, warm the new version before
 * moving traffic) is the FunctionService's; this class only decides when, and makes sure
 * one function is never converged twice at once (a second request while one runs is
 * coalesced into one more run after it).
 */
import type { ConsolaInstance } from "consola";
import PQueue from "p-queue";
import type { ChangeBus } from "./changes.ts";

export interface ReconcilerOptions {
  /** Brings one function's local pool to what the store says (absent there: removed here). */
  converge(name: string): Promise<void>;
  /** Every function worth a look: the store's and those this node still runs. */
  names(): Promise<string[]>;
  /** Re-reads the schedules (cron). */
  syncSchedules(): Promise<void>;
  bus?: ChangeBus;
  logger: ConsolaInstance;
  /** Full reconcile period, ms. Default 5000. */
  everyMs?: number;
  /** Functions converged at once during a full pass. Default 4. */
  concurrency?: number;
}

export class Reconciler implements AsyncDisposable {
  private readonly running = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private readonly queue: PQueue;
  private timer: ReturnType<typeof setInterval> | undefined;
  private pass: Promise<void> | undefined;
  private closed = false;
  private failing = false;

  constructor(private readonly o: ReconcilerOptions) {
    this.queue = new PQueue({ concurrency: o.concurrency ?? 4 });
    o.bus?.onChange((change) => {
      if (change.kind === "function") void this.converge(change.name);
      else void this.o.syncSchedules().catch((err: unknown) => this.o.logger.warn("could not re-read schedules after a change:", err));
    });
    // Messages sent while the subscription was down are gone: look at everything.
    o.bus?.onResync(() => void this.reconcileAll());
  }

  start(): void {
    this.timer = setInterval(() => void this.reconcileAll(), this.o.everyMs ?? 5000);
    this.timer.unref?.();
  }

  /** Converges one function; resolves once a run that started after this call finished. */
  converge(name: string): Promise<void> {
    const current = this.running.get(name);
    if (current) {
      // The run under way may have read the store before this change: it goes once more.
      this.again.add(name);
      return current;
    }
    const run = Promise.resolve().then(async () => {
      for (;;) {
        this.again.delete(name);
        if (!this.closed) {
          try {
            await this.o.converge(name);
          } catch (err) {
            // The periodic pass tries again; the node keeps serving what it has.
            this.o.logger.warn(`could not converge ${name} on the cluster's state:`, err);
          }
        }
        // Checked and cleared in one step: a converge() after this starts a new run.
        if (!this.again.has(name) || this.closed) {
          this.running.delete(name);
          return;
        }
      }
    });
    this.running.set(name, run);
    return run;
  }

  /** One full pass over every function (a pass already under way is joined, not doubled). */
  reconcileAll(): Promise<void> {
    return (this.pass ??= (async () => {
      try {
        const names = await this.o.names();
        if (this.failing) this.o.logger.info("reconcile: the store answers again");
        this.failing = false;
        // converge() never rejects; onIdle (not the tasks' own promises, which a clear() at stop
        // leaves unsettled) says the pass is over.
        for (const n of names) void this.queue.add(() => this.converge(n));
        await Promise.all([this.queue.onIdle(), this.o.syncSchedules()]);
      } catch (err) {
        if (!this.failing) this.o.logger.warn(`reconcile: could not read the store (${err instanceof Error ? err.message : String(err)}); serving what this node holds, retrying every ${this.o.everyMs ?? 5000} ms`);
        this.failing = true;
      }
    })().finally(() => (this.pass = undefined)));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    this.queue.clear();
    await Promise.allSettled([...this.running.values(), this.pass]);
  }
}
