/**
 * Who fires a cron tick, and whether a schedule's previous run still holds it. In one
 * process both answers are local; with Redis, every node sharing it arms the same
 * schedules and a lease per tick (SET NX PX on forge:cron:<scheduleId>:<tickEpoch>) lets
 * exactly one of them fire it. The run lock makes overlap "skip" hold across nodes.
 */
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";

export interface RunLock {
  release(): Promise<void>;
}

export interface CronLeases {
  /** True on exactly one node for a given tick of a schedule. */
  claimTick(scheduleId: string, tick: number): Promise<boolean>;
  /** The schedule's run lock, or undefined while another run holds it. */
  claimRun(scheduleId: string): Promise<RunLock | undefined>;
}

/** One process: every tick is this process's; run locks are a set. */
export function localCronLeases(): CronLeases {
  const running = new Set<string>();
  return {
    claimTick: async () => true,
    async claimRun(id) {
      if (running.has(id)) return undefined;
      running.add(id);
      return { release: async () => void running.delete(id) };
    },
  };
}

export interface RedisCronLeasesOptions {
  /** How long a tick lease lives, ms: longer than any clock skew between nodes. Default 10 min. */
  tickLeaseMs?: number;
  /** TTL of a run lock, ms, renewed at a third of it while the run lasts; a crashed node's lock goes after it. Default 30 s. */
  runLeaseMs?: number;
  /** Key prefix. Default "forge:cron:". */
  prefix?: string;
}

export function redisCronLeases(redis: Redis, options: RedisCronLeasesOptions = {}): CronLeases {
  const { tickLeaseMs, runLeaseMs, prefix } = { tickLeaseMs: 10 * 60_000, runLeaseMs: 30_000, prefix: "forge:cron:", ...options };
  const node = randomBytes(8).toString("hex");
  return {
    async claimTick(id, tick) {
      return (await redis.set(`${prefix}${id}:${tick}`, node, "PX", tickLeaseMs, "NX")) === "OK";
    },
    async claimRun(id) {
      const key = `${prefix}${id}:running`;
      const token = `${node}:${randomBytes(6).toString("hex")}`;
      if ((await redis.set(key, token, "PX", runLeaseMs, "NX")) !== "OK") return undefined;
      const renew = setInterval(() => {
        redis.eval(RENEW, 1, key, token, String(runLeaseMs)).catch(() => {
          // A missed renewal only risks an overlapping run after the TTL; the next one may land.
        });
      }, Math.max(1000, Math.floor(runLeaseMs / 3)));
      renew.unref?.();
      return {
        async release() {
          clearInterval(renew);
          await redis.eval(RELEASE, 1, key, token).catch(() => {
            // The lock expires on its own after runLeaseMs.
          });
        },
      };
    },
  };
}

// --- internal ---

/** Only the holder may extend or delete its lock (a lock that expired may belong to another node now). */
const RENEW = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("pexpire", KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`;
