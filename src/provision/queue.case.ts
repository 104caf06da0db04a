/**
 * The one test suite every Queue implementation passes (queue.test.ts runs it against the
 * memory and Redis queues).
 */
import { describe, expect, test } from "bun:test";
import { PermanentError, type DeadLetter, type HandlerContext, type Queue, type QueueMessage, type RetryPolicy } from "./queue.ts";

export interface Body {
  n: number;
}

export interface QueueFixture extends AsyncDisposable {
  /** Two handles on one queue, as two processes would hold them (the memory queue gives the same object twice). */
  first: Queue<Body>;
  second: Queue<Body>;
}

export interface FixtureOptions {
  retry: RetryPolicy;
  visibilityTimeoutMs: number;
}

export type OpenFixture = (o: FixtureOptions) => Promise<QueueFixture>;

const RETRY: RetryPolicy = { maxAttempts: 3, baseDelayMs: 20, maxDelayMs: 50 };
const VISIBILITY = 400;

export function queueCase(label: string, open: OpenFixture | undefined): void {
  describe.skipIf(!open)(`queue: ${label}`, () => {
    const fixture = (visibilityTimeoutMs = VISIBILITY): Promise<QueueFixture> => {
      if (!open) throw new Error("unreachable: skipped");
      return open({ retry: RETRY, visibilityTimeoutMs });
    };

    test("delivers each message once, in order, on attempt 1", async () => {
      await using f = await fixture();
      const seen: QueueMessage<Body>[] = [];
      for (const n of [1, 2, 3]) await f.first.enqueue({ n });
      await using _c = f.first.consume(async (m) => void seen.push(m), { concurrency: 1 });
      await until(() => seen.length === 3);
      expect(seen.map((m) => m.body.n)).toEqual([1, 2, 3]);
      expect(seen.map((m) => m.attempt)).toEqual([1, 1, 1]);
      expect(new Set(seen.map((m) => m.id)).size).toBe(3);
      expect(seen.every((m) => m.enqueuedAt > 0 && m.enqueuedAt <= Date.now())).toBe(true);
      await until(async () => (await f.first.depth()) === 0);
    });

    test("an acked message is not delivered again", async () => {
      await using f = await fixture();
      const seen: number[] = [];
      await using _c = f.first.consume(async (m) => void seen.push(m.body.n));
      await f.first.enqueue({ n: 1 });
      await until(() => seen.includes(1));
      await f.first.enqueue({ n: 2 });
      await until(() => seen.includes(2));
      expect(seen).toEqual([1, 2]);
      expect(await f.first.deadLetters()).toEqual([]);
    });

    test("depth counts messages waiting and in hand", async () => {
      await using f = await fixture();
      await f.first.enqueue({ n: 1 });
      await f.first.enqueue({ n: 2 });
      expect(await f.first.depth()).toBe(2);
      const gate = deferred();
      let started = 0;
      await using _c = f.first.consume(async () => {
        started++;
        await gate.promise;
      });
      await until(() => started === 2);
      expect(await f.first.depth()).toBe(2);
      gate.resolve();
      await until(async () => (await f.first.depth()) === 0);
    });

    test("a failing message is retried with growing attempts until it succeeds", async () => {
      await using f = await fixture();
      const attempts: number[] = [];
      let done = false;
      await using _c = f.first.consume(async (m) => {
        attempts.push(m.attempt);
        if (m.attempt < 3) throw new Error(`transient ${m.attempt}`);
        done = true;
      });
      const id = await f.first.enqueue({ n: 7 });
      await until(() => done);
      expect(attempts).toEqual([1, 2, 3]);
      expect(await f.first.deadLetters()).toEqual([]);
      await until(async () => (await f.first.depth()) === 0);
      expect(typeof id).toBe("string");
    });

    test("a message failing every attempt lands in dead letters with its last reason", async () => {
      await using f = await fixture();
      const attempts: number[] = [];
      const hooked: DeadLetter<Body>[] = [];
      const id = await f.first.enqueue({ n: 9 });
      await using _c = f.first.consume(
        async (m) => {
          attempts.push(m.attempt);
          throw new Error(`boom ${m.attempt}`);
        },
        { onDeadLetter: async (l) => void hooked.push(l) },
      );
      const dead = await until(async () => {
        const d = await f.first.deadLetters();
        return d.length === 1 ? d : undefined;
      });
      expect(attempts).toEqual([1, 2, 3]);
      expect(dead[0]).toMatchObject({ id, body: { n: 9 }, attempts: 3, reason: "boom 3" });
      expect(hooked).toHaveLength(1);
      expect(hooked[0]).toMatchObject({ id, attempts: 3, reason: "boom 3" });
      await until(async () => (await f.first.depth()) === 0);
    });

    test("a PermanentError dead-letters at once", async () => {
      await using f = await fixture();
      const attempts: number[] = [];
      await f.first.enqueue({ n: 1 });
      await using _c = f.first.consume(async (m) => {
        attempts.push(m.attempt);
        throw new PermanentError("bad input, do not retry");
      });
      const dead = await until(async () => {
        const d = await f.first.deadLetters();
        return d.length === 1 ? d : undefined;
      });
      expect(attempts).toEqual([1]);
      expect(dead[0]).toMatchObject({ attempts: 1, reason: "bad input, do not retry" });
    });

    test("dead letters list newest first and honour the limit", async () => {
      await using f = await fixture();
      await using _c = f.first.consume(async () => {
        throw new PermanentError("no");
      });
      for (const n of [1, 2, 3]) {
        await f.first.enqueue({ n });
        await until(async () => (await f.first.deadLetters()).length === n);
      }
      expect((await f.first.deadLetters()).map((d) => d.body.n)).toEqual([3, 2, 1]);
      expect((await f.first.deadLetters(2)).map((d) => d.body.n)).toEqual([3, 2]);
    });

    test("a message whose consumer stops answering goes to another consumer", async () => {
      await using f = await fixture();
      const stuck = deferred<QueueMessage<Body>>();
      // The first consumer takes the message and hangs without heartbeats, as a dead process would.
      const first = f.first.consume(
        async (m, ctx) => {
          stuck.resolve(m);
          await aborted(ctx);
        },
        { concurrency: 1 },
      );
      await f.first.enqueue({ n: 5 });
      const taken = await stuck.promise;
      const got: QueueMessage<Body>[] = [];
      await using _second = f.second.consume(async (m) => void got.push(m));
      await until(() => got.length === 1, 10_000);
      expect(got[0]).toMatchObject({ id: taken.id, body: { n: 5 }, attempt: 2 });
      // The first one comes back and acks late: that must not disturb anything.
      await first.close();
      await until(async () => (await f.first.depth()) === 0);
      expect(got).toHaveLength(1);
      expect(await f.first.deadLetters()).toEqual([]);
    });

    test("heartbeats keep a long message from being redelivered", async () => {
      // A wide margin between heartbeats and the visibility timeout: a loaded machine stalls.
      const visibility = 800;
      await using f = await fixture(visibility);
      let deliveries = 0;
      let finished = false;
      const taken = deferred();
      await using _a = f.first.consume(
        async (_m, ctx) => {
          deliveries++;
          taken.resolve();
          // Work lasting 2 visibility timeouts, heartbeating as it goes.
          for (let i = 0; i < 16; i++) {
            await Bun.sleep(visibility / 8);
            await ctx.heartbeat();
          }
          finished = true;
        },
        { concurrency: 1 },
      );
      await f.first.enqueue({ n: 1 });
      await taken.promise;
      // Another consumer that would take the message over if the heartbeats did not hold it.
      await using _b = f.second.consume(async () => void deliveries++);
      await until(() => finished, 10_000);
      await until(async () => (await f.first.depth()) === 0);
      expect(deliveries).toBe(1);
    }, 15_000);

    test("heartbeat() throws once the message went to another consumer", async () => {
      await using f = await fixture();
      const late = deferred<unknown>();
      const gotSecond = deferred();
      const taken = deferred();
      const first = f.first.consume(
        async (_m, ctx) => {
          taken.resolve();
          await gotSecond.promise;
          late.resolve(await ctx.heartbeat().then(() => "ok", (err: unknown) => err));
        },
        { concurrency: 1 },
      );
      await f.first.enqueue({ n: 1 });
      await taken.promise;
      await using _b = f.second.consume(async () => gotSecond.resolve());
      const result = await late.promise;
      expect(result).toBeInstanceOf(Error);
      await first.close();
    }, 15_000);

    test("a consumer closing mid-message hands it back on the same attempt", async () => {
      await using f = await fixture();
      const started = deferred<QueueMessage<Body>>();
      const first = f.first.consume(
        async (m, ctx) => {
          started.resolve(m);
          await aborted(ctx);
          throw new Error("interrupted by close");
        },
        { concurrency: 1 },
      );
      await f.first.enqueue({ n: 3 });
      const taken = await started.promise;
      const got: QueueMessage<Body>[] = [];
      await using _b = f.second.consume(async (m) => void got.push(m));
      await first.close();
      await until(() => got.length === 1);
      expect(got[0]).toMatchObject({ id: taken.id, attempt: 1 });
    });

    test("a consumer handles at most `concurrency` messages at once", async () => {
      await using f = await fixture();
      let running = 0;
      let most = 0;
      let done = 0;
      const gates: (() => void)[] = [];
      await using _c = f.first.consume(
        async () => {
          running++;
          most = Math.max(most, running);
          await new Promise<void>((resolve) => gates.push(resolve));
          running--;
          done++;
        },
        { concurrency: 2 },
      );
      for (let n = 0; n < 6; n++) await f.first.enqueue({ n });
      while (done < 6) {
        await until(() => gates.length > 0 || done === 6);
        expect(running).toBeLessThanOrEqual(2);
        gates.shift()?.();
      }
      expect(most).toBe(2);
    });
  });
}

// --- internal ---

async function until<T>(check: () => T | Promise<T>, timeoutMs = 5000): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error("timed out waiting for a condition");
    await Bun.sleep(5); // polling interval of a condition wait
  }
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void; // assigned synchronously by the Promise constructor
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

function aborted(ctx: HandlerContext): Promise<void> {
  return new Promise((resolve) => {
    if (ctx.signal.aborted) return resolve();
    ctx.signal.addEventListener("abort", () => resolve(), { once: true });
  });
}
