/**
 * Jobs in Redis, shared by every forge node and worker: JSON at `<prefix>:job:<id>` and the
 * ids in a lexically ordered sorted set `<prefix>:job-index` (ids sort by creation time).
 * A status change is one Lua script (read, compare the status, merge, write, set or clear
 * the TTL), so it is atomic against every other node.
 */
import type { Redis } from "ioredis";
import { RedisScript } from "./_redis-script.ts";
import { EXPIRING, type JobPatch, type JobStatus, type ProvisionJob } from "./job.ts";
import type { JobPage, JobStore, Transition } from "./job-store.ts";

export interface RedisJobStoreOptions {
  /** A connected client; the store never closes it. */
  redis: Redis;
  /** Key prefix. Default "forge". */
  prefix?: string;
  /** How long failed and deleted jobs are kept, ms. */
  ttlMs: number;
}

export function createRedisJobStore(options: RedisJobStoreOptions): JobStore {
  return new RedisJobStore(options);
}

// --- internal ---

// KEYS: job; ARGV: allowed statuses ",a,b,", patch JSON, now (ISO), ttl ms, expiring statuses ",x,y,"
// Returns {1, json} when applied, {0, json} when the status did not match, {0, false} when missing.
const TRANSITION = new RedisScript(`local raw = redis.call('GET', KEYS[1])
if not raw then return {0, false} end
local job = cjson.decode(raw)
if not string.find(ARGV[1], ',' .. job.status .. ',', 1, true) then return {0, raw} end
for k, v in pairs(cjson.decode(ARGV[2])) do
  if v == cjson.null then job[k] = nil else job[k] = v end
end
job.updated_at = ARGV[3]
local out = cjson.encode(job)
if string.find(ARGV[5], ',' .. job.status .. ',', 1, true) then
  redis.call('SET', KEYS[1], out, 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], out)
end
return {1, out}`);

class RedisJobStore implements JobStore {
  private readonly redis: Redis;
  private readonly prefix: string;
  private readonly index: string;

  constructor(private readonly o: RedisJobStoreOptions) {
    this.redis = o.redis;
    this.prefix = o.prefix ?? "forge";
    this.index = `${this.prefix}:job-index`;
  }

  async create(job: ProvisionJob): Promise<void> {
    const set = await this.redis.set(this.key(job.id), JSON.stringify(job), "NX");
    if (set !== "OK") throw new Error(`job ${job.id} exists`);
    await this.redis.zadd(this.index, 0, job.id);
  }

  async get(id: string): Promise<ProvisionJob | undefined> {
    return parse(await this.redis.get(this.key(id)));
  }

  async list(options: { limit?: number; cursor?: string } = {}): Promise<JobPage> {
    const limit = options.limit ?? 20;
    const jobs: ProvisionJob[] = [];
    let max = options.cursor === undefined ? "+" : `(${options.cursor}`;
    // Read one more than asked to know whether a next page exists; expired ids are dropped from the index as met.
    for (;;) {
      const want = limit + 1 - jobs.length;
      const ids = await this.redis.zrevrangebylex(this.index, max, "-", "LIMIT", 0, want);
      if (ids.length === 0) break;
      const raws = await this.redis.mget(ids.map((id) => this.key(id)));
      const gone: string[] = [];
      ids.forEach((id, i) => {
        const job = parse(raws[i] ?? null);
        if (job) jobs.push(job);
        else gone.push(id);
      });
      if (gone.length) await this.redis.zrem(this.index, ...gone);
      const last = ids[ids.length - 1];
      if (jobs.length > limit || ids.length < want || last === undefined) break;
      max = `(${last}`;
    }
    const page = jobs.slice(0, limit);
    return { jobs: page, nextCursor: jobs.length > limit ? (page[page.length - 1]?.id ?? null) : null };
  }

  async transition(id: string, from: readonly JobStatus[], patch: JobPatch): Promise<Transition> {
    const reply = (await TRANSITION.run(
      this.redis,
      [this.key(id)],
      [`,${from.join(",")},`, JSON.stringify(patch), new Date().toISOString(), this.o.ttlMs, `,${EXPIRING.join(",")},`],
    )) as [number, string | null];
    const job = parse(reply[1]);
    return reply[0] === 1 && job ? { ok: true, job } : { ok: false, job };
  }

  async close(): Promise<void> {}

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  private key(id: string): string {
    return `${this.prefix}:job:${id}`;
  }
}

function parse(raw: string | null): ProvisionJob | undefined {
  if (raw === null) return undefined;
  try {
    return JSON.parse(raw) as ProvisionJob;
  } catch {
    return undefined;
  }
}
