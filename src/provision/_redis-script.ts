/** A Lua script run by its SHA, loaded on first use (or after a Redis restart flushed the cache). */
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";

export class RedisScript {
  private readonly sha: string;

  constructor(private readonly lua: string) {
    this.sha = createHash("sha1").update(lua).digest("hex");
  }

  async run(redis: Redis, keys: string[], args: (string | number)[] = []): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!isRedisError(err, "NOSCRIPT")) throw err;
      return await redis.eval(this.lua, keys.length, ...keys, ...args);
    }
  }
}

/** Redis replies errors as "CODE message"; the code is the protocol's way to tell them apart. */
export function isRedisError(err: unknown, code: string): boolean {
  return err instanceof Error && err.message.startsWith(code);
}
