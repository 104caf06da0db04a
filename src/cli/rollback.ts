import { defineCommand } from "citty";
import { client, intArg, jsonArg, output, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "rollback", description: "switch to another version (default: the previous one)" },
  args: {
    name: { type: "positional", required: true, description: "function name" },
    to: { type: "string", description: "version number to switch to" },
    ...jsonArg,
  },
  async run({ args }) {
    const r = await client().rollback(String(args.name), intArg(args.to, "to"));
    output(Boolean(args.json), r, () => ui.success(`${r.name} now serves version ${r.version}`));
  },
});
