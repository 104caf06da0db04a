import { defineCommand } from "citty";
import { ago, client, jsonArg, output, table, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "versions", description: "a function's versions, newest first" },
  args: { name: { type: "positional", required: true, description: "function name" }, ...jsonArg },
  async run({ args }) {
    const { versions } = await client().versions(String(args.name));
    output(Boolean(args.json), versions, () => {
      const rows = [["VERSION", "ACTIVE", "STATUS", "DIGEST", "CREATED"]];
      for (const v of versions) rows.push([`v${v.version}`, v.active ? "*" : "", v.status ?? "ready", v.digest.slice(0, 12), `${ago(Date.now() - v.createdAt)} ago`]);
      ui.log(table(rows));
      // Why the newest failed version failed: the first line of its error.
      const failed = versions.find((v) => v.status === "failed" && v.error);
      if (failed?.error) ui.log(`\nv${failed.version} failed: ${failed.error.split("\n").slice(0, 3).join("\n  ")}`);
    });
  },
});
