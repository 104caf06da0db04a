/**
 * The Queue on Redis Streams, shared by every forge node and `forge worker` process that
 * points at the same Redis:
 *
 * - `<key>`: the stream, read by one consumer group with XREADGROUP BLOCK; an entry holds the
 *   message (`m`, JSON of id, body, enqueuedAt) and its attempt (`a`). Handled entries are
 *   acked and deleted, so the stream's length is the work waiting or in hand.
 * - a taken entry that goes idle past the visibility timeout (its consumer died, or stopped
 *   calling heartbeat(), which resets the idle time with XCLAIM JUSTID) is taken over with
 *   XAUTOCLAIM by another consumer and re-added with attempt + 1;
 * - `<key>:delayed`: retries waiting out their backoff (a sorted set scored by due time on
 *   Redis's clock), moved back into the stream when due;
 * - `<key>:dead`: the dead-letter stream, capped at `maxDeadLetters`.
 *
 * Every step that ends a delivery (ack, retry, dead letter, release) is one Lua script that
 * first checks, with XPENDING, that this consumer still owns the entry: a consumer that was
 * presumed dead and comes back cannot ack a message another consumer now holds.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { hostname } from "node:os";
import type { ConsolaInstance } from "consola";
import type { Redis } from "ioredis";
import PQueue from "p-queue";
import { ErrorCode, ForgeError } from "../errors.ts";
import { reasonOf, retryPolicy, sleep, StaleDelivery } from "./_queue-shared.ts";
import { isRedisError, RedisScript } from "./_redis-script.ts";
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

export interface RedisQueueOptions {
  /** A connected client for commands; the queue duplicates it for blocking reads and never closes it. */
  redis: Redis;
  /** Stream key, e.g. forge:jobs or forge:async. */
  key: string;
  /** Consumer group. Default "forge". */
  group?: string;
  /** Retry policy; default 3 attempts, 500 ms doubling up to 30 s. */
  retry?: Partial<RetryPolicy>;
  /** Idle time of a taken message before another consumer takes it over, ms. Default 30000. */
  visibilityTimeoutMs?: number;
  /** Longest XREADGROUP BLOCK, ms (bounds how late a due retry is noticed). Default 1000. */
  blockMs?: number;
  /** Dead letters kept (approximately). Default 10000. */
  maxDeadLetters?: number;
  logger?: ConsolaInstance;
}

export function createRedisQueue<T>(options: RedisQueueOptions): Queue<T> {
  return new RedisQueue<T>(options);
}

// --- internal ---

interface Payload<T> {
  id: string;
  body: T;
  enqueuedAt: number;
}

interface StreamEntry {
  streamId: string;
  fields: Map<string, string>;
}

const OWNED = `local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return 0 end
`;
const DONE = `redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1`;

// KEYS: stream; ARGV: group, consumer, id
const ACK = new RedisScript(OWNED + DONE);
// KEYS: stream; ARGV: group, consumer, id
const HEARTBEAT = new RedisScript(OWNED + `redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1`);
// KEYS: stream, delayed; ARGV: group, consumer, id, member ("<attempt>|<payload>"), delay ms
const RETRY = new RedisScript(
  OWNED +
    `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
` +
    DONE,
);
// KEYS: stream; ARGV: group, consumer, id, payload, attempt
const REQUEUE = new RedisScript(OWNED + `redis.call('XADD', KEYS[1], '*', 'm', ARGV[4], 'a', ARGV[5])\n` + DONE);
// KEYS: stream, dead; ARGV: group, consumer, id, payload, attempts, reason, failedAt, maxlen
const DEAD = new RedisScript(
  OWNED + `redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'm', ARGV[4], 'a', ARGV[5], 'r', ARGV[6], 't', ARGV[7])\n` + DONE,
);
// KEYS: delayed, stream; ARGV: max to move. Returns ms until the next retry is due, or -1.
const PROMOTE = new RedisScript(`local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local bar = string.find(member, '|', 1, true)
  redis.call('XADD', KEYS[2], '*', 'm', string.sub(member, bar + 1), 'a', string.sub(member, 1, bar - 1))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return -1 end
return math.max(0, tonumber(nxt[2]) - now)`);

class RedisQueue<T> implements Queue<T> {
  readonly name: string;
  readonly redis: Redis;
  readonly group: string;
  readonly policy: RetryPolicy;
  readonly visibilityMs: number;
  readonly blockMs: number;
  readonly maxDead: number;
  readonly logger: ConsolaInstance | undefined;
  readonly delayedKey: string;
  readonly deadKey: string;
  private readonly consumers = new Set<RedisConsumer<T>>();
  private groupReady: Promise<void> | undefined;
  private closed = false;

  constructor(o: RedisQueueOptions) {
    this.name = o.key;
    this.redis = o.redis;
    this.group = o.group ?? "forge";
    this.policy = retryPolicy(o.retry);
    this.visibilityMs = o.visibilityTimeoutMs ?? 30_000;
    this.blockMs = o.blockMs ?? 1000;
    this.maxDead = o.maxDeadLetters ?? 10_000;
    this.logger = o.logger;
    this.delayedKey = `${o.key}:delayed`;
    this.deadKey = `${o.key}:dead`;
  }

  async enqueue(body: T): Promise<string> {
    this.assertOpen();
    await this.ensureGroup();
    const payload: Payload<T> = { id: randomUUID(), body, enqueuedAt: Date.now() };
    await this.redis.xadd(this.name, "*", "m", JSON.stringify(payload), "a", "1");
    return payload.id;
  }

  consume(handler: (msg: QueueMessage<T>, ctx: HandlerContext) => Promise<void>, options: ConsumeOptions<T> = {}): Consumer {
    this.assertOpen();
    const consumer = new RedisConsumer<T>(this, handler, options);
    this.consumers.add(consumer);
    consumer.start();
    return consumer;
  }

  async deadLetters(limit = 100): Promise<DeadLetter<T>[]> {
    const raw = await this.redis.xrevrange(this.deadKey, "+", "-", "COUNT", limit);
    const out: DeadLetter<T>[] = [];
    for (const [, flat] of raw) {
      const f = fieldMap(flat);
      const payload = parsePayload<T>(f.get("m"));
      if (!payload) continue;
      out.push({ id: payload.id, body: payload.body, attempts: Number(f.get("a") ?? 0), reason: f.get("r") ?? "", failedAt: Number(f.get("t") ?? 0) });
    }
    return out;
  }

  async depth(): Promise<number> {
    const [len, delayed] = await Promise.all([this.redis.xlen(this.name), this.redis.zcard(this.delayedKey)]);
    return len + delayed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.consumers].map((c) => c.close()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- used by RedisConsumer ---

  ensureGroup(): Promise<void> {
    return (this.groupReady ??= this.redis.xgroup("CREATE", this.name, this.group, "0", "MKSTREAM").then(
      () => undefined,
      (err: unknown) => {
        if (isRedisError(err, "BUSYGROUP")) return;
        this.groupReady = undefined;
        throw err;
      },
    ));
  }

  resetGroup(): void {
    this.groupReady = undefined;
  }

  forget(c: RedisConsumer<T>): void {
    this.consumers.delete(c);
  }

  private assertOpen(): void {
    if (this.closed) throw new ForgeError(ErrorCode.Disposed, 500, `queue ${this.name} is closed`);
  }
}

class RedisConsumer<T> implements Consumer {
  private readonly name = `${hostname()}-${process.pid}-${randomBytes(3).toString("hex")}`;
  private readonly concurrency: number;
  private readonly abort = new AbortController();
  /** Entries in hand. Only read entries are added, never more than `concurrency`, so none waits in it while its idle time runs. */
  private readonly jobs: PQueue;
  private readonly onDeadLetter: ConsumeOptions<T>["onDeadLetter"];
  private blocking: Redis | undefined;
  private loop: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private lastReclaim = 0;

  constructor(
    private readonly q: RedisQueue<T>,
    private readonly handler: (msg: QueueMessage<T>, ctx: HandlerContext) => Promise<void>,
    options: ConsumeOptions<T>,
  ) {
    this.concurrency = Math.max(1, options.concurrency ?? 4);
    this.onDeadLetter = options.onDeadLetter;
    this.jobs = new PQueue({ concurrency: this.concurrency });
  }

  start(): void {
    this.blocking = this.q.redis.duplicate();
    this.loop = this.run();
  }

  close(): Promise<void> {
    return (this.closing ??= (async () => {
      this.abort.abort();
      // A pending XREADGROUP BLOCK only ends when its connection does. A loop waiting for a free
      // slot wakes when the first entry in hand ends, and close waits for all of them anyway.
      this.blocking?.disconnect();
      await this.loop;
      await this.jobs.onIdle();
      await this.leaveGroup().catch((err: unknown) => this.q.logger?.debug(`queue ${this.q.name}: could not remove consumer ${this.name}:`, err));
      this.q.forget(this);
    })());
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- private ---

  private get closed(): boolean {
    return this.abort.signal.aborted;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      try {
        await this.q.ensureGroup();
        if (this.jobs.pending >= this.concurrency) {
          await new Promise<void>((resolve) => this.jobs.once("next", resolve));
          continue;
        }
        await this.maybeReclaim();
        const untilDue = Number(await PROMOTE.run(this.q.redis, [this.q.delayedKey, this.q.name], [100]));
        const block = untilDue >= 0 ? Math.max(1, Math.min(this.q.blockMs, untilDue)) : this.q.blockMs;
        if (this.closed) break;
        const free = this.concurrency - this.jobs.pending;
        const reply: unknown = await this.blocking?.xreadgroup("GROUP", this.q.group, this.name, "COUNT", free, "BLOCK", block, "STREAMS", this.q.name, ">");
        for (const entry of parseRead(reply)) this.dispatch(entry);
        failures = 0;
      } catch (err) {
        if (this.closed) break;
        if (isRedisError(err, "NOGROUP")) this.q.resetGroup();
        failures++;
        this.q.logger?.warn(`queue ${this.q.name}: read failed (${reasonOf(err)}); retrying`);
        await sleep(Math.min(5000, 100 * 2 ** Math.min(failures, 6)), this.abort.signal);
      }
    }
  }

  private dispatch(entry: StreamEntry): void {
    this.jobs.add(() => this.handle(entry)).catch((err: unknown) => this.q.logger?.error(`queue ${this.q.name}: could not settle ${entry.streamId}:`, err));
  }

  private async handle(entry: StreamEntry): Promise<void> {
    const payload = parsePayload<T>(entry.fields.get("m"));
    const attempt = Number(entry.fields.get("a") ?? 1);
    const base = [this.q.group, this.name, entry.streamId];
    if (!payload) {
      this.q.logger?.warn(`queue ${this.q.name}: dropping malformed entry ${entry.streamId}`);
      await ACK.run(this.q.redis, [this.q.name], base);
      return;
    }
    const signal = this.abort.signal;
    const ctx: HandlerContext = {
      signal,
      heartbeat: async () => {
        const ok = await HEARTBEAT.run(this.q.redis, [this.q.name], base);
        if (Number(ok) !== 1) throw new StaleDelivery(payload.id);
      },
    };
    try {
      await this.handler({ id: payload.id, body: payload.body, attempt, enqueuedAt: payload.enqueuedAt }, ctx);
    } catch (err) {
      const permanent = err instanceof PermanentError;
      if (signal.aborted && !permanent) {
        // Closing: hand it back at once, same attempt, rather than waiting out the visibility timeout.
        await REQUEUE.run(this.q.redis, [this.q.name], [...base, JSON.stringify(payload), attempt]);
      } else if (permanent || attempt >= this.q.policy.maxAttempts) {
        await this.deadLetter(entry.streamId, payload, attempt, reasonOf(err));
      } else {
        this.q.logger?.debug(`queue ${this.q.name}: ${payload.id} attempt ${attempt} failed, retrying: ${reasonOf(err)}`);
        const member = `${attempt + 1}|${JSON.stringify(payload)}`;
        await RETRY.run(this.q.redis, [this.q.name, this.q.delayedKey], [...base, member, backoffDelay(this.q.policy, attempt)]);
      }
      return;
    }
    await ACK.run(this.q.redis, [this.q.name], base);
  }

  private async deadLetter(streamId: string, payload: Payload<T>, attempts: number, reason: string): Promise<void> {
    const failedAt = Date.now();
    if (this.onDeadLetter) {
      await this.onDeadLetter({ id: payload.id, body: payload.body, attempts, reason, failedAt }).catch((err: unknown) =>
        this.q.logger?.error(`queue ${this.q.name}: dead-letter hook failed for ${payload.id}:`, err),
      );
    }
    await DEAD.run(this.q.redis, [this.q.name, this.q.deadKey], [this.q.group, this.name, streamId, JSON.stringify(payload), attempts, reason.slice(0, 4000), failedAt, this.q.maxDead]);
  }

  /** Takes over entries idle past the visibility timeout: each counts as a failed attempt. */
  private async maybeReclaim(): Promise<void> {
    const now = Date.now();
    if (now - this.lastReclaim < Math.max(50, this.q.visibilityMs / 4)) return;
    this.lastReclaim = now;
    let cursor = "0-0";
    for (let round = 0; round < 10; round++) {
      const reply = await this.q.redis.call("XAUTOCLAIM", this.q.name, this.q.group, this.name, this.q.visibilityMs, cursor, "COUNT", 100);
      const { next, entries } = parseAutoclaim(reply);
      for (const e of entries) {
        const payload = parsePayload<T>(e.fields.get("m"));
        const attempt = Number(e.fields.get("a") ?? 1);
        const base = [this.q.group, this.name, e.streamId];
        if (!payload) {
          await ACK.run(this.q.redis, [this.q.name], base);
        } else if (attempt >= this.q.policy.maxAttempts) {
          const reason = `no ack or heartbeat within ${this.q.visibilityMs} ms on attempt ${attempt} (the consumer died or hung)`;
          await this.deadLetter(e.streamId, payload, attempt, reason);
        } else {
          this.q.logger?.info(`queue ${this.q.name}: ${payload.id} was idle past ${this.q.visibilityMs} ms on attempt ${attempt}; redelivering`);
          await REQUEUE.run(this.q.redis, [this.q.name], [...base, JSON.stringify(payload), attempt + 1]);
        }
      }
      if (next === "0-0") return;
      cursor = next;
    }
  }

  /** Removes this consumer from the group when it holds nothing (a consumer with pending entries must stay listed). */
  private async leaveGroup(): Promise<void> {
    const pending = (await this.q.redis.call("XPENDING", this.q.name, this.q.group, "-", "+", 1, this.name)) as unknown[];
    if (Array.isArray(pending) && pending.length === 0) await this.q.redis.call("XGROUP", "DELCONSUMER", this.q.name, this.q.group, this.name);
    this.blocking?.disconnect();
  }
}

function parsePayload<T>(raw: string | undefined): Payload<T> | undefined {
  if (raw === undefined) return undefined;
  try {
    const p = JSON.parse(raw) as Payload<T>;
    return typeof p === "object" && p !== null && typeof p.id === "string" ? p : undefined;
  } catch {
    return undefined;
  }
}

function fieldMap(flat: unknown): Map<string, string> {
  const m = new Map<string, string>();
  if (!Array.isArray(flat)) return m;
  for (let i = 0; i + 1 < flat.length; i += 2) m.set(String(flat[i]), String(flat[i + 1]));
  return m;
}

function toEntries(list: unknown): StreamEntry[] {
  if (!Array.isArray(list)) return [];
  const out: StreamEntry[] = [];
  for (const item of list) {
    if (!Array.isArray(item) || typeof item[0] !== "string") continue;
    out.push({ streamId: item[0], fields: fieldMap(item[1]) });
  }
  return out;
}

/** XREADGROUP replies [[key, [[id, [field, value, ...]], ...]]], or null when BLOCK timed out. */
function parseRead(reply: unknown): StreamEntry[] {
  if (!Array.isArray(reply)) return [];
  // One stream read: some client paths unwrap the outer array to [key, entries].
  if (typeof reply[0] === "string") return toEntries(reply[1]);
  return reply.flatMap((stream: unknown) => (Array.isArray(stream) ? toEntries(stream[1]) : []));
}

/** XAUTOCLAIM replies [next cursor, entries, deleted ids]. */
function parseAutoclaim(reply: unknown): { next: string; entries: StreamEntry[] } {
  if (!Array.isArray(reply)) return { next: "0-0", entries: [] };
  return { next: typeof reply[0] === "string" ? reply[0] : "0-0", entries: toEntries(reply[1]) };
}
