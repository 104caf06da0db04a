import { defineCommand } from "citty";
import { ago, client, jsonArg, output, table, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "versions", description: "a function's versions, newest first" },
  args: { name: { type: "positional", required: true, description: "function name" }, ...jsonArg },
  async run({ args }) {
    const { versions } = await client().versions(String(args.name));
    output(Boolean(args.json), versions, () => {
      const rows = [["VERSION", "ACTIVE", "DIGEST", "CREATED"]];
      for (const v of versions) rows.push([`v${v.version}`, v.active ? "*" : "", v.digest.slice(0, 12), `${ago(Date.now() - v.createdAt)} ago`]);
      ui.log(table(rows));
    });
  },
});
