import { defineCommand } from "citty";
import { client, jsonArg, output, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "unschedule", description: "delete a cron schedule" },
  args: { id: { type: "positional", required: true, description: "schedule id (see `forge schedules`)" }, ...jsonArg },
  async run({ args }) {
    const r = await client().json<{ id: string; deleted: boolean }>("DELETE", `/v1/schedules/${encodeURIComponent(String(args.id))}`);
    output(Boolean(args.json), r, () => ui.success(`deleted schedule ${r.id}`));
  },
});
