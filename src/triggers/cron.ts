/**
 * Cron expressions and schedule input: validation (a 400 before anything is saved) and the
 * next tick after a given instant. croner is used as a calculator only; the scheduler owns
 * its timers so that a fake clock can drive it.
 */
import { Cron } from "croner";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { ScheduleRecord } from "../store/index.ts";

export type Overlap = ScheduleRecord["overlap"];

/** A validated schedule request (POST /v1/functions/:name/schedules). */
export interface ScheduleInput {
  /** 5 fields (minute precision) or 6 (seconds first); nicknames such as @hourly too. */
  cron: string;
  /** IANA zone the expression is read in; null means UTC. */
  timezone: string | null;
  /** JSON text sent as the POST body of each run, or null for an empty body. */
  payload: string | null;
  overlap: Overlap;
}

/** Largest payload a schedule may carry; it is stored with the schedule and sent every tick. */
export const MAX_SCHEDULE_PAYLOAD_BYTES = 256 * 1024;

const CRON_HINT =
  'use 5 fields "min hour day month weekday" (e.g. "*/5 * * * *") or 6 with seconds first (e.g. "*/10 * * * * *"); see https://croner.56k.guru/usage/pattern/';

/** Validates the body of a schedule request; every problem is a 400 with a hint. */
export function parseScheduleInput(body: unknown): ScheduleInput {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw bad(ErrorCode.BadRequest, "a schedule must be a JSON object", `e.g. {"cron": "*/5 * * * *", "data": {"job": "sync"}}`);
  }
  const b = body as Record<string, unknown>;
  for (const key of Object.keys(b)) {
    if (!["cron", "timezone", "tz", "data", "overlap"].includes(key)) {
      throw bad(ErrorCode.BadRequest, `unknown schedule field "${key.slice(0, 40)}"`, "a schedule has cron, timezone, data and overlap");
    }
  }
  if (typeof b.cron !== "string" || b.cron.trim() === "") throw bad(ErrorCode.InvalidCron, `"cron" is required and must be a string`, CRON_HINT);
  const cron = b.cron.trim().replace(/\s+/g, " ");
  const tz = b.timezone ?? b.tz;
  if (tz !== undefined && tz !== null && typeof tz !== "string") {
    throw bad(ErrorCode.BadRequest, `"timezone" must be a string`, `an IANA zone such as "Europe/Oslo" or "America/New_York"`);
  }
  const timezone = typeof tz === "string" && tz.trim() !== "" ? assertTimezone(tz.trim()) : null;
  const overlap: unknown = b.overlap ?? "skip";
  if (overlap !== "skip" && overlap !== "allow") {
    throw bad(ErrorCode.BadRequest, `"overlap" must be "skip" or "allow"`, `skip (default) drops a tick while the previous run is still going; allow runs it anyway`);
  }
  let payload: string | null = null;
  if (b.data !== undefined) {
    payload = JSON.stringify(b.data);
    if (Buffer.byteLength(payload) > MAX_SCHEDULE_PAYLOAD_BYTES) {
      throw bad(ErrorCode.BodyTooLarge, `"data" is larger than ${MAX_SCHEDULE_PAYLOAD_BYTES / 1024} KB`, "keep schedule payloads small; let the function fetch what it needs");
    }
  }
  const spec: ScheduleInput = { cron, timezone, payload, overlap };
  // A valid expression that never matches (30 February) would arm nothing, silently.
  if (nextTick(spec, Date.now()) === null) {
    throw bad(ErrorCode.InvalidCron, `cron "${cron.slice(0, 80)}" never fires`, CRON_HINT);
  }
  return spec;
}

/** The epoch ms of the first tick strictly after `after`, or null when there is none. */
export function nextTick(spec: Pick<ScheduleInput, "cron" | "timezone">, after: number): number | null {
  let job: Cron;
  try {
    job = new Cron(spec.cron, { mode: "5-or-6-parts", paused: true, ...(spec.timezone ? { timezone: spec.timezone } : { timezone: "UTC" }) });
  } catch (err) {
    throw bad(ErrorCode.InvalidCron, `invalid cron "${spec.cron.slice(0, 80)}": ${err instanceof Error ? err.message.replace(/^CronPattern: /, "") : String(err)}`, CRON_HINT);
  }
  return job.nextRun(new Date(after))?.getTime() ?? null;
}

// --- internal ---

function assertTimezone(tz: string): string {
  try {
    new Intl.DateTimeFormat("en-US", { timeZone: tz });
    return tz;
  } catch {
    throw bad(ErrorCode.BadRequest, `unknown timezone "${tz.slice(0, 60)}"`, `use an IANA zone such as "Europe/Oslo", "America/New_York" or "UTC"`);
  }
}

function bad(code: ErrorCode, message: string, hint: string): ForgeError {
  return new ForgeError(code, 400, message, { hint });
}
