/**
 * MemoryLedger: the memory the budget counts, by owner (a function, or the stem cells), and
 * its integral over time (MiB-milliseconds), so an operator sees what keeping functions warm
 * costs (forge_instance_memory_seconds_total). Every change goes through add(); the integral
 * of an owner is brought up to date only when its figure changes or is read.
 */
import type { Clock } from "./clock.ts";

/** The ledger's owner key of the stem cells (no function is named "": names start with a letter). */
export const CELLS = "";

interface Account {
  mb: number;
  /** MiB-ms up to `at`. */
  mbMs: number;
  at: number;
}

export class MemoryLedger {
  private readonly accounts = new Map<string, Account>();
  /** Functions deleted while they still held memory: their account goes once it is back at 0. */
  private readonly closing = new Set<string>();
  private totalMb = 0;
  private peakMb = 0;

  constructor(private readonly clock: Clock) {}

  /** MiB counted now, all owners. */
  get used(): number {
    return this.totalMb;
  }

  /** The highest `used` since start. */
  get peak(): number {
    return this.peakMb;
  }

  /**
   * Changes an owner's figure by `deltaMb` (negative: memory given back). `transientMb`: how much
   * of the new total is about to go at once (a cell the reserved instance takes right after),
   * left out of the peak.
   */
  add(owner: string, deltaMb: number, transientMb = 0): void {
    if (deltaMb === 0) return;
    const now = this.clock.now();
    let a = this.accounts.get(owner);
    if (!a) this.accounts.set(owner, (a = { mb: 0, mbMs: 0, at: now }));
    a.mbMs += a.mb * (now - a.at);
    a.at = now;
    // Never below zero: a release of memory already given back (a race of two paths) is a no-op.
    const applied = Math.max(-a.mb, deltaMb);
    a.mb += applied;
    this.totalMb += applied;
    if (this.totalMb - transientMb > this.peakMb) this.peakMb = this.totalMb - transientMb;
    if (a.mb === 0 && this.closing.has(owner)) {
      this.accounts.delete(owner);
      this.closing.delete(owner);
    }
  }

  /** MiB an owner holds now. */
  held(owner: string): number {
    return this.accounts.get(owner)?.mb ?? 0;
  }

  /** A function was deleted: its account goes once its instances gave their memory back. */
  forget(owner: string): void {
    const a = this.accounts.get(owner);
    if (!a || a.mb === 0) this.accounts.delete(owner);
    else this.closing.add(owner);
  }

  /** A function deleted and deployed again keeps its account. */
  keep(owner: string): void {
    this.closing.delete(owner);
  }

  /** Memory-time per owner up to now, MiB-seconds. */
  mbSeconds(): Map<string, number> {
    const now = this.clock.now();
    const out = new Map<string, number>();
    for (const [owner, a] of this.accounts) out.set(owner, (a.mbMs + a.mb * (now - a.at)) / 1000);
    return out;
  }
}
