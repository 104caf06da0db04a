/**
 * The triggers' control API, mounted on the router's /v1 app (behind its auth) through the
 * router's `extend` hook: schedules, async invocation records and dead letters.
 */
import type { Hono } from "hono";
import { ErrorCode, ForgeError } from "../errors.ts";
import { readJson } from "../router/index.ts";
import type { AsyncInvoker } from "./async-invoker.ts";
import type { Scheduler } from "./scheduler.ts";

export interface TriggerRoutesOptions {
  scheduler: Scheduler;
  async: AsyncInvoker;
  /** Rejects with the 404 of a function that does not exist. */
  assertFunction: (name: string) => Promise<void>;
}

export function mountTriggerRoutes(v1: Hono, o: TriggerRoutesOptions): void {
  v1.post("/functions/:name/schedules", async (c) => {
    const name = c.req.param("name");
    await o.assertFunction(name);
    const body = await readJson(c.req.raw, 1024 * 1024, null);
    return c.json(await o.scheduler.create(name, body), 201);
  });

  v1.get("/functions/:name/schedules", async (c) => {
    const name = c.req.param("name");
    await o.assertFunction(name);
    return c.json({ schedules: await o.scheduler.list(name) });
  });

  v1.get("/schedules", async (c) => c.json({ schedules: await o.scheduler.list() }));
  v1.get("/schedules/:id", async (c) => c.json(await o.scheduler.get(c.req.param("id"))));
  v1.delete("/schedules/:id", async (c) => {
    const id = c.req.param("id");
    await o.scheduler.delete(id);
    return c.json({ id, deleted: true });
  });

  v1.get("/invocations/:id", async (c) => c.json(await o.async.get(c.req.param("id"))));

  v1.get("/functions/:name/dead-letters", async (c) => {
    const name = c.req.param("name");
    await o.assertFunction(name);
    return c.json({ deadLetters: await o.async.deadLetters(name, limitOf(c.req.query("limit"))) });
  });
}

// --- internal ---

function limitOf(q: string | undefined): number {
  if (q === undefined || q === "") return 100;
  const n = Number(q);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    throw new ForgeError(ErrorCode.BadRequest, 400, `limit=${q.slice(0, 20)} is out of range`, { hint: "use a whole number from 1 to 1000" });
  }
  return n;
}
