/** The shared queue suite against the memory queue and the Redis Streams queue (real Redis). */
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { requireServices } from "../../test/_services.ts";
import { createMemoryQueue } from "./memory-queue.ts";
import { queueCase, type Body, type OpenFixture } from "./queue.case.ts";
import { createRedisQueue } from "./redis-queue.ts";

const openMemory: OpenFixture = async (o) => {
  const q = createMemoryQueue<Body>({ retry: o.retry, visibilityTimeoutMs: o.visibilityTimeoutMs });
  return { first: q, second: q, [Symbol.asyncDispose]: () => q.close() };
};

const services = requireServices("redisUrl");
const openRedis: OpenFixture | undefined = services
  ? async (o) => {
      const key = `forge-test:${randomBytes(6).toString("hex")}:jobs`;
      const a = new Redis(services.redisUrl);
      const b = new Redis(services.redisUrl);
      const common = { key, retry: o.retry, visibilityTimeoutMs: o.visibilityTimeoutMs, blockMs: 200 };
      const first = createRedisQueue<Body>({ ...common, redis: a });
      const second = createRedisQueue<Body>({ ...common, redis: b });
      return {
        first,
        second,
        async [Symbol.asyncDispose]() {
          await Promise.all([first.close(), second.close()]);
          await a.del(key, `${key}:delayed`, `${key}:dead`);
          a.disconnect();
          b.disconnect();
        },
      };
    }
  : undefined;

queueCase("memory", openMemory);
queueCase("redis streams", openRedis);
