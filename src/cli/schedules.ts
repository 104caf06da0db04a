import { defineCommand } from "citty";
import type { ScheduleView } from "../triggers/index.ts";
import { ago, client, jsonArg, output, table, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "schedules", description: "list cron schedules, of one function or all" },
  args: {
    name: { type: "positional", required: false, description: "function name (default: all functions)" },
    ...jsonArg,
  },
  async run({ args }) {
    const path = args.name ? `/v1/functions/${encodeURIComponent(String(args.name))}/schedules` : "/v1/schedules";
    const { schedules } = await client().json<{ schedules: ScheduleView[] }>("GET", path);
    output(Boolean(args.json), schedules, () => {
      if (schedules.length === 0) return ui.info("no schedules: add one with `forge schedule <name> --cron \"*/5 * * * *\"`");
      const now = Date.now();
      const rows = [["ID", "FUNCTION", "CRON", "TZ", "OVERLAP", "RUNS", "SKIPPED", "LAST", "NEXT"]];
      for (const s of schedules) {
        const last = s.lastRunAt === null ? "-" : `${ago(now - s.lastRunAt)} ago (${s.lastStatus ?? "error"})`;
        const next = s.nextRunAt === null ? "-" : new Date(s.nextRunAt).toISOString();
        rows.push([s.id, s.function, s.cron, s.timezone ?? "UTC", s.overlap, String(s.runs), String(s.skipped), last, next]);
      }
      ui.log(table(rows));
    });
  },
});
