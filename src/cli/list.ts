import { defineCommand } from "citty";
import { ago, client, jsonArg, output, table, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "list", description: "list functions" },
  args: { ...jsonArg },
  async run({ args }) {
    const { functions } = await client().list();
    output(Boolean(args.json), functions, () => {
      if (functions.length === 0) return ui.info("no functions yet: deploy one with `forge deploy ./examples/hello`");
      const rows = [["NAME", "VERSION", "URL", "UPDATED"]];
      for (const f of functions) rows.push([f.name, `v${f.version}`, f.url, `${ago(Date.now() - f.updatedAt)} ago`]);
      ui.log(table(rows));
    });
  },
});
