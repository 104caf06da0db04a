/**
 * The Queue interface shared by the provisioner and async invocations: at-least-once
 * delivery with a visibility timeout, retries with exponential backoff and jitter, and a
 * dead-letter list after the last attempt. Implementations: memory (embedded default)
 * and Redis Streams with a consumer group (several forge nodes share one stream).
 *
 * Handlers must be idempotent: a message is redelivered when its consumer dies or its
 * visibility timeout passes without a heartbeat.
 */

export interface QueueMessage<T> {
  id: string;
  body: T;
  /** 1 on first delivery. */
  attempt: number;
  enqueuedAt: number;
}

export interface DeadLetter<T> {
  id: string;
  body: T;
  attempts: number;
  /** The last error's message. */
  reason: string;
  failedAt: number;
}

export interface HandlerContext {
  /** Keeps a long job from being reclaimed by another consumer (extends its visibility). */
  heartbeat(): Promise<void>;
  /** Aborted when the consumer is closing. */
  signal: AbortSignal;
}

/** Throw from a handler to stop retrying and dead-letter the message at once. */
export class PermanentError extends Error {
  override readonly name = "PermanentError";
}

export interface RetryPolicy {
  /** Attempts in all, first included. Default 3. */
  maxAttempts: number;
  /** First retry delay, ms; doubles each attempt. Default 500. */
  baseDelayMs: number;
  /** Longest delay, ms. Default 30000. */
  maxDelayMs: number;
}

export interface ConsumeOptions<T = unknown> {
  /** Messages handled at once by this consumer. Default 4. */
  concurrency?: number;
  /**
   * Called with a message about to be dead-lettered (attempts used up, a PermanentError, or its
   * consumers kept dying), before it is moved: if this process dies in between, the message is
   * redelivered and this runs again, so it must be idempotent. Its errors are logged, not retried.
   */
  onDeadLetter?: (letter: DeadLetter<T>) => Promise<void>;
}

export interface Consumer extends AsyncDisposable {
  /** Stops taking messages; waits for the ones in hand to finish. */
  close(): Promise<void>;
}

export interface Queue<T> extends AsyncDisposable {
  readonly name: string;
  /** Adds a message; resolves with its id once it is durable (Redis) or queued (memory). */
  enqueue(body: T): Promise<string>;
  /** Starts handling messages; resolving acks, throwing retries (or dead-letters a PermanentError). */
  consume(handler: (msg: QueueMessage<T>, ctx: HandlerContext) => Promise<void>, options?: ConsumeOptions<T>): Consumer;
  /** Newest first. */
  deadLetters(limit?: number): Promise<DeadLetter<T>[]>;
  /** Messages waiting or in hand (for metrics and tests). */
  depth(): Promise<number>;
  close(): Promise<void>;
}

/** Delay before attempt `attempt + 1`: exponential with full jitter, capped. */
export function backoffDelay(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + (random() * exp) / 2);
}
