import { defineCommand } from "citty";
import { client, jsonArg, output, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "delete", description: "stop a function's instances and remove it with its versions and schedules" },
  args: { name: { type: "positional", required: true, description: "function name" }, ...jsonArg },
  async run({ args }) {
    const r = await client().delete(String(args.name));
    output(Boolean(args.json), r, () => ui.success(`deleted ${r.name}`));
  },
});
