/** The one suite every JobStore passes (job-store.test.ts runs it on the memory and Redis stores). */
import { describe, expect, test } from "bun:test";
import { newJobId, type ProvisionJob } from "./job.ts";
import type { JobStore } from "./job-store.ts";

export type OpenStore = (ttlMs: number) => Promise<JobStore>;

const TTL = 300;

export function jobStoreCase(label: string, open: OpenStore | undefined): void {
  describe.skipIf(!open)(`job store: ${label}`, () => {
    const store = (): Promise<JobStore> => {
      if (!open) throw new Error("unreachable: skipped");
      return open(TTL);
    };

    test("create, get, and unknown ids", async () => {
      await using s = await store();
      const job = newJob("checkout");
      await s.create(job);
      expect(await s.get(job.id)).toEqual(job);
      expect(await s.get(newJobId())).toBeUndefined();
      await expect(s.create(job)).rejects.toThrow();
    });

    test("lists newest first, page by page", async () => {
      await using s = await store();
      const t0 = Date.now();
      const jobs = [0, 1, 2, 3, 4].map((i) => newJob(`svc-${i}`, t0 + i));
      for (const j of jobs) await s.create(j);
      const seen: string[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await s.list({ limit: 2, ...(cursor ? { cursor } : {}) });
        seen.push(...page.jobs.map((j) => j.service_name));
        cursor = page.nextCursor ?? undefined;
        pages++;
      } while (cursor && pages < 10);
      expect(seen.filter((n) => n.startsWith("svc-"))).toEqual(["svc-4", "svc-3", "svc-2", "svc-1", "svc-0"]);
    });

    test("a status change is compare-and-set", async () => {
      await using s = await store();
      const job = newJob("a");
      await s.create(job);
      const moved = await s.transition(job.id, ["pending"], { status: "provisioning", attempts: 1 });
      expect(moved.ok).toBe(true);
      expect(moved.job).toMatchObject({ status: "provisioning", attempts: 1 });
      const again = await s.transition(job.id, ["pending"], { status: "provisioning" });
      expect(again).toMatchObject({ ok: false, job: { status: "provisioning" } });
      expect(await s.transition(newJobId(), ["pending"], { status: "failed" })).toEqual({ ok: false, job: undefined });
    });

    test("a DELETE during provisioning is never overwritten by ready", async () => {
      await using s = await store();
      const job = newJob("race");
      await s.create(job);
      await s.transition(job.id, ["pending"], { status: "provisioning" });
      expect((await s.transition(job.id, ["pending", "provisioning", "ready"], { status: "deleting" })).ok).toBe(true);
      const late = await s.transition(job.id, ["provisioning"], {
        status: "ready",
        connection: { host: "127.0.0.1", port: 1, username: "u", password: "p", database: "d" },
      });
      expect(late).toMatchObject({ ok: false, job: { status: "deleting" } });
      expect((await s.transition(job.id, ["deleting"], { status: "deleted" })).ok).toBe(true);
      expect((await s.get(job.id))?.connection).toBeUndefined();
    });

    test("concurrent changes from one status: exactly one wins", async () => {
      await using s = await store();
      const job = newJob("many");
      await s.create(job);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => s.transition(job.id, ["pending"], { status: "provisioning", attempts: i + 1 })));
      expect(results.filter((r) => r.ok)).toHaveLength(1);
    });

    test("null removes a field, updated_at moves", async () => {
      await using s = await store();
      const job = newJob("fields");
      await s.create(job);
      const conn = { host: "127.0.0.1", port: 5432, username: "u", password: "p w'\"/", database: "app_fields" };
      const ready = await s.transition(job.id, ["pending"], { status: "ready", connection: conn, url: "postgres://x" });
      expect(ready.job?.connection).toEqual(conn);
      expect(Date.parse(ready.job?.updated_at ?? "")).toBeGreaterThanOrEqual(Date.parse(job.updated_at));
      const cleared = await s.transition(job.id, ["ready"], { status: "deleting", connection: null, url: null, detail: "going" });
      expect(cleared.job).toMatchObject({ status: "deleting", detail: "going" });
      expect(cleared.job?.connection).toBeUndefined();
      expect(cleared.job?.url).toBeUndefined();
    });

    test("failed and deleted jobs expire; live ones never do", async () => {
      await using s = await store();
      const failed = newJob("failed");
      const ready = newJob("ready");
      const revived = newJob("revived");
      for (const j of [failed, ready, revived]) await s.create(j);
      await s.transition(ready.id, ["pending"], { status: "ready" });
      // failed -> deleting makes a record live again: its TTL goes away.
      await s.transition(revived.id, ["pending"], { status: "failed" });
      await s.transition(revived.id, ["failed"], { status: "deleting" });
      await s.transition(failed.id, ["pending"], { status: "failed", detail: "boom" });
      expect((await s.get(failed.id))?.detail).toBe("boom");
      const deadline = Date.now() + 10_000;
      while ((await s.get(failed.id)) !== undefined) {
        if (Date.now() > deadline) throw new Error("the failed job never expired");
        await Bun.sleep(20); // polling for the expiry
      }
      expect((await s.get(ready.id))?.status).toBe("ready");
      expect((await s.get(revived.id))?.status).toBe("deleting");
      const listed = (await s.list({ limit: 100 })).jobs.map((j) => j.id);
      expect(listed).not.toContain(failed.id);
      expect(listed).toContain(ready.id);
    });
  });
}

function newJob(service: string, now = Date.now()): ProvisionJob {
  const at = new Date(now).toISOString();
  return { id: newJobId(now), service_name: service, resource: "postgres", backend: "docker", status: "pending", created_at: at, updated_at: at, attempts: 0 };
}
