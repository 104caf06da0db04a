import { defineCommand } from "citty";
import { resolve } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { ScheduleView } from "../triggers/index.ts";
import { client, jsonArg, output, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "schedule", description: "run a function on a cron schedule" },
  args: {
    name: { type: "positional", required: true, description: "function name" },
    cron: { type: "string", required: true, description: 'cron expression: 5 fields, or 6 with seconds first (e.g. "*/5 * * * *")' },
    data: { type: "string", description: "JSON body of each run, or @file to read it from a file" },
    tz: { type: "string", description: "IANA timezone the expression is read in (default UTC), e.g. Europe/Oslo" },
    overlap: { type: "string", description: "skip (default): skip a tick while the previous run is going; allow: run anyway" },
    ...jsonArg,
  },
  async run({ args }) {
    const body: Record<string, unknown> = { cron: String(args.cron) };
    if (args.tz) body.timezone = String(args.tz);
    if (args.overlap) body.overlap = String(args.overlap);
    if (args.data !== undefined) body.data = await readData(String(args.data));
    const s = await client().json<ScheduleView>("POST", `/v1/functions/${encodeURIComponent(String(args.name))}/schedules`, body);
    output(Boolean(args.json), s, () => {
      ui.success(`scheduled ${s.id}: ${s.function} at "${s.cron}"${s.timezone ? ` (${s.timezone})` : " (UTC)"}, overlap ${s.overlap}`);
      if (s.nextRunAt !== null) ui.info(`next run: ${new Date(s.nextRunAt).toISOString()}`);
    });
  },
});

async function readData(d: string): Promise<unknown> {
  let text = d;
  if (d.startsWith("@")) {
    const f = Bun.file(resolve(d.slice(1)));
    if (!(await f.exists())) throw new ForgeError(ErrorCode.BadRequest, 400, `${d.slice(1)} does not exist`, { hint: "pass --data @path/to/file.json" });
    text = await f.text();
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new ForgeError(ErrorCode.InvalidJson, 400, "--data is not valid JSON", { hint: `e.g. --data '{"job":"sync"}' (quote it for your shell)` });
  }
}
