/** Helpers both Queue implementations share. */
import type { RetryPolicy } from "./queue.ts";

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 3, baseDelayMs: 500, maxDelayMs: 30_000 };

export function retryPolicy(partial: Partial<RetryPolicy> = {}): RetryPolicy {
  const p = { ...DEFAULT_RETRY, ...partial };
  return { maxAttempts: Math.max(1, Math.floor(p.maxAttempts)), baseDelayMs: Math.max(0, p.baseDelayMs), maxDelayMs: Math.max(0, p.maxDelayMs) };
}

/** Thrown by heartbeat() when the message was given to another consumer meanwhile. */
export class StaleDelivery extends Error {
  override readonly name = "StaleDelivery";
  constructor(id: string) {
    super(`message ${id} was redelivered to another consumer (its visibility timeout passed)`);
  }
}

export function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Waits `ms`, or less when `signal` aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
