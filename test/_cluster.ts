/**
 * What a test of several nodes stands on: a Postgres database of its own (made, then dropped
 * WITH (FORCE)) and a Redis key prefix of its own (its keys deleted after), and the settings
 * that make a forge process a node of that cluster.
 */
import { randomBytes } from "node:crypto";
import { SQL } from "bun";
import { Redis } from "ioredis";

export interface TestCluster extends AsyncDisposable {
  dbUrl: string;
  prefix: string;
  /**
   * A node's environment: shared Postgres and Redis, one bun stem cell, fast heartbeats. The
   * reconcile and the schedules' own re-read are an hour away unless `extra` says otherwise,
   * so what a test sees travelled by notification.
   */
  env(extra?: Record<string, string>): Record<string, string>;
}

/** `services`: a Postgres superuser URL and a Redis URL (requireServices). */
export async function testCluster(services: { pgUrl: string; redisUrl: string }, name = "cluster"): Promise<TestCluster> {
  const id = randomBytes(5).toString("hex");
  const dbName = `forge_${name.replace(/[^a-z0-9]/g, "_")}_${id}`;
  const prefix = `forge-${name}-${id}`;
  const admin = new SQL(services.pgUrl);
  await admin.unsafe(`create database ${dbName}`);
  const u = new URL(services.pgUrl);
  u.pathname = `/${dbName}`;
  const dbUrl = u.toString();
  return {
    dbUrl,
    prefix,
    env: (extra = {}) => ({
      FORGE_DB: dbUrl,
      FORGE_REDIS_URL: services.redisUrl,
      FORGE_REDIS_PREFIX: prefix,
      FORGE_STEM_CELLS: "bun=1,node=0",
      FORGE_RECONCILE: "1h",
      FORGE_HEARTBEAT: "200ms",
      FORGE_TRIGGER_SYNC: "1h",
      ...extra,
    }),
    async [Symbol.asyncDispose]() {
      try {
        await admin.unsafe(`drop database if exists ${dbName} with (force)`);
      } finally {
        await admin.close();
      }
      const redis = new Redis(services.redisUrl);
      try {
        const keys = await redis.keys(`${prefix}:*`);
        if (keys.length > 0) await redis.del(...keys);
      } finally {
        redis.disconnect();
      }
    },
  };
}
