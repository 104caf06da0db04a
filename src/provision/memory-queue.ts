/**
 * The in-process Queue: the embedded default when FORGE_REDIS_URL is unset. Same semantics
 * as the Redis one (visibility timeout, heartbeats, retries with backoff, dead letters),
 * without durability: messages live as long as the process.
 */
import { randomUUID } from "node:crypto";
import type { ConsolaInstance } from "consola";
import PQueue from "p-queue";
import { ErrorCode, ForgeError } from "../errors.ts";
import { reasonOf, retryPolicy, StaleDelivery } from "./_queue-shared.ts";
import {
  backoffDelay,
  PermanentError,
  type ConsumeOptions,
  type Consumer,
  type DeadLetter,
  type HandlerContext,
  type Queue,
  type QueueMessage,
  type RetryPolicy,
} from "./queue.ts";

export interface MemoryQueueOptions {
  /** Queue name, for logs and metrics. Default "jobs". */
  name?: string;
  /** Retry policy; default 3 attempts, 500 ms doubling up to 30 s. */
  retry?: Partial<RetryPolicy>;
  /** Time a taken message may go without an ack or heartbeat before it is redelivered, ms. Default 30000. */
  visibilityTimeoutMs?: number;
  /** Dead letters kept, oldest dropped first. Default 1000. */
  maxDeadLetters?: number;
  logger?: ConsolaInstance;
}

interface Entry<T> {
  id: string;
  body: T;
  attempt: number;
  enqueuedAt: number;
}

interface Delivery<T> {
  entry: Entry<T>;
  consumer: MemoryConsumer<T>;
  timer: ReturnType<typeof setTimeout>;
}

export function createMemoryQueue<T>(options: MemoryQueueOptions = {}): Queue<T> {
  return new MemoryQueue<T>(options);
}

// --- internal ---

class MemoryQueue<T> implements Queue<T> {
  readonly name: string;
  readonly policy: RetryPolicy;
  readonly visibilityMs: number;
  private readonly maxDead: number;
  readonly logger: ConsolaInstance | undefined;
  private readonly ready: Entry<T>[] = [];
  /** Retries waiting out their backoff. */
  private readonly delayed = new Set<ReturnType<typeof setTimeout>>();
  /** Taken messages by delivery token; a token no longer here means the delivery went stale. */
  private readonly inHand = new Map<number, Delivery<T>>();
  private readonly dead: DeadLetter<T>[] = [];
  private readonly consumers = new Set<MemoryConsumer<T>>();
  private nextToken = 1;
  private closed = false;

  constructor(o: MemoryQueueOptions) {
    this.name = o.name ?? "jobs";
    this.policy = retryPolicy(o.retry);
    this.visibilityMs = o.visibilityTimeoutMs ?? 30_000;
    this.maxDead = o.maxDeadLetters ?? 1000;
    this.logger = o.logger;
  }

  async enqueue(body: T): Promise<string> {
    this.assertOpen();
    const entry: Entry<T> = { id: randomUUID(), body, attempt: 1, enqueuedAt: Date.now() };
    this.push(entry);
    return entry.id;
  }

  consume(handler: (msg: QueueMessage<T>, ctx: HandlerContext) => Promise<void>, options: ConsumeOptions<T> = {}): Consumer {
    this.assertOpen();
    const consumer = new MemoryConsumer<T>(this, handler, options);
    this.consumers.add(consumer);
    consumer.pump();
    return consumer;
  }

  async deadLetters(limit = 100): Promise<DeadLetter<T>[]> {
    return this.dead.slice(-limit).reverse();
  }

  async depth(): Promise<number> {
    return this.ready.length + this.delayed.size + this.inHand.size;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.consumers].map((c) => c.close()));
    for (const t of this.delayed) clearTimeout(t);
    this.delayed.clear();
    for (const d of this.inHand.values()) clearTimeout(d.timer);
    this.inHand.clear();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- used by MemoryConsumer ---

  take(consumer: MemoryConsumer<T>): { token: number; entry: Entry<T> } | undefined {
    const entry = this.ready.shift();
    if (!entry) return undefined;
    const token = this.nextToken++;
    this.inHand.set(token, { entry, consumer, timer: this.visibilityTimer(token) });
    return { token, entry };
  }

  /** Extends a delivery's visibility; false when it went stale (another consumer has it). */
  heartbeat(token: number): boolean {
    const d = this.inHand.get(token);
    if (!d) return false;
    clearTimeout(d.timer);
    d.timer = this.visibilityTimer(token);
    return true;
  }

  /** Ends a delivery; undefined when it went stale, so its outcome must be ignored. */
  settle(token: number): Entry<T> | undefined {
    const d = this.inHand.get(token);
    if (!d) return undefined;
    clearTimeout(d.timer);
    this.inHand.delete(token);
    return d.entry;
  }

  retryLater(entry: Entry<T>): void {
    const delay = backoffDelay(this.policy, entry.attempt);
    const t = setTimeout(() => {
      this.delayed.delete(t);
      this.push({ ...entry, attempt: entry.attempt + 1 });
    }, delay);
    this.delayed.add(t);
  }

  /** Puts a message back at the front, same attempt (its consumer closed before finishing). */
  release(entry: Entry<T>): void {
    this.ready.unshift(entry);
    this.wake();
  }

  async deadLetter(entry: Entry<T>, attempts: number, reason: string, onDead: ConsumeOptions<T>["onDeadLetter"]): Promise<void> {
    const letter: DeadLetter<T> = { id: entry.id, body: entry.body, attempts, reason, failedAt: Date.now() };
    if (onDead) await onDead(letter).catch((err: unknown) => this.logger?.error(`queue ${this.name}: dead-letter hook failed for ${entry.id}:`, err));
    this.dead.push(letter);
    if (this.dead.length > this.maxDead) this.dead.splice(0, this.dead.length - this.maxDead);
  }

  forget(consumer: MemoryConsumer<T>): void {
    this.consumers.delete(consumer);
  }

  // --- private ---

  private push(entry: Entry<T>): void {
    if (this.closed) return;
    this.ready.push(entry);
    this.wake();
  }

  private wake(): void {
    for (const c of this.consumers) c.pump();
  }

  /** A delivery that outlives its visibility counts as a failed attempt: its consumer is presumed dead. */
  private visibilityTimer(token: number): ReturnType<typeof setTimeout> {
    return setTimeout(() => {
      const d = this.inHand.get(token);
      if (!d) return;
      this.inHand.delete(token);
      const next = d.entry.attempt + 1;
      if (next > this.policy.maxAttempts) {
        const reason = `no ack or heartbeat within ${this.visibilityMs} ms on attempt ${d.entry.attempt} (the consumer died or hung)`;
        const live = [...this.consumers][0] ?? d.consumer;
        void this.deadLetter(d.entry, d.entry.attempt, reason, live.onDeadLetter);
      } else {
        this.push({ ...d.entry, attempt: next });
      }
    }, this.visibilityMs);
  }

  private assertOpen(): void {
    if (this.closed) throw new ForgeError(ErrorCode.Disposed, 500, `queue ${this.name} is closed`);
  }
}

class MemoryConsumer<T> implements Consumer {
  private readonly concurrency: number;
  private readonly abort = new AbortController();
  /** Messages in hand. Only taken messages are added, never more than `concurrency`, so none waits in it with its visibility timer running. */
  private readonly jobs: PQueue;
  private closing: Promise<void> | undefined;
  readonly onDeadLetter: ConsumeOptions<T>["onDeadLetter"];

  constructor(
    private readonly queue: MemoryQueue<T>,
    private readonly handler: (msg: QueueMessage<T>, ctx: HandlerContext) => Promise<void>,
    options: ConsumeOptions<T>,
  ) {
    this.concurrency = Math.max(1, options.concurrency ?? 4);
    this.onDeadLetter = options.onDeadLetter;
    this.jobs = new PQueue({ concurrency: this.concurrency });
    this.jobs.on("next", () => this.pump());
  }

  pump(): void {
    while (!this.abort.signal.aborted && this.jobs.pending < this.concurrency) {
      const taken = this.queue.take(this);
      if (!taken) return;
      this.jobs
        .add(() => this.handle(taken.token, taken.entry))
        .catch((err: unknown) => this.queue.logger?.error(`queue ${this.queue.name}: could not settle ${taken.entry.id}:`, err));
    }
  }

  close(): Promise<void> {
    return (this.closing ??= (async () => {
      this.abort.abort();
      await this.jobs.onIdle();
      this.queue.forget(this);
    })());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private async handle(token: number, entry: Entry<T>): Promise<void> {
    const signal = this.abort.signal;
    const ctx: HandlerContext = {
      signal,
      heartbeat: async () => {
        if (!this.queue.heartbeat(token)) throw new StaleDelivery(entry.id);
      },
    };
    try {
      await this.handler({ id: entry.id, body: entry.body, attempt: entry.attempt, enqueuedAt: entry.enqueuedAt }, ctx);
      this.queue.settle(token);
    } catch (err) {
      if (!this.queue.settle(token)) return;
      const permanent = err instanceof PermanentError;
      if (signal.aborted && !permanent) {
        this.queue.release(entry);
      } else if (permanent || entry.attempt >= this.queue.policy.maxAttempts) {
        await this.queue.deadLetter(entry, entry.attempt, reasonOf(err), this.onDeadLetter);
      } else {
        this.queue.logger?.debug(`queue ${this.queue.name}: ${entry.id} attempt ${entry.attempt} failed, retrying: ${reasonOf(err)}`);
        this.queue.retryLater(entry);
      }
    }
  }
}
