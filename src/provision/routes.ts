/**
 * The broker's HTTP face, mounted under /v1 (behind auth) through the router's `extend` hook:
 *
 *   POST   /v1/provision {service_name, resource?, backend?}  -> 202, Location, the job
 *   GET    /v1/provision?limit=&cursor=                       -> {jobs (newest first), next_cursor}
 *   GET    /v1/provision/:id                                  -> the job
 *   DELETE /v1/provision/:id                                  -> 202 deleting | 200 already deleted | 404
 */
import type { Hono } from "hono";
import { ErrorCode, ForgeError } from "../errors.ts";
import { publicJob } from "./job.ts";
import type { ProvisionService } from "./service.ts";

const MAX_BODY = 16 * 1024;

export function provisionRoutes(service: ProvisionService): (v1: Hono) => void {
  return (v1) => {
    v1.post("/provision", async (c) => {
      const job = await service.create(await readJsonBody(c.req.raw));
      return c.json(publicJob(job), 202, { location: `/v1/provision/${job.id}` });
    });

    v1.get("/provision", async (c) => {
      const page = await service.list({ limit: c.req.query("limit"), cursor: c.req.query("cursor") });
      return c.json({ jobs: page.jobs.map(publicJob), next_cursor: page.nextCursor });
    });

    v1.get("/provision/:id", async (c) => c.json(publicJob(await service.get(c.req.param("id")))));

    v1.delete("/provision/:id", async (c) => {
      const { job, accepted } = await service.delete(c.req.param("id"));
      return c.json(publicJob(job), accepted ? 202 : 200);
    });
  };
}

// --- internal ---

async function readJsonBody(req: Request): Promise<unknown> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  const text = Number.isFinite(declared) && declared > MAX_BODY ? undefined : await req.text();
  if (text === undefined || text.length > MAX_BODY) {
    throw new ForgeError(ErrorCode.BodyTooLarge, 413, `the request body is larger than ${MAX_BODY / 1024} KB`, { hint: `send {"service_name": "checkout"}` });
  }
  if (text.trim() === "") {
    throw new ForgeError(ErrorCode.BadRequest, 400, "the request body is empty", { hint: `send JSON with Content-Type: application/json, e.g. {"service_name": "checkout"}` });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ForgeError(ErrorCode.InvalidJson, 400, `the request body is not valid JSON: ${(err as Error).message}`, {
      hint: `send JSON with Content-Type: application/json, e.g. {"service_name": "checkout"}`,
    });
  }
}
