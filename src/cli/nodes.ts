import { defineCommand } from "citty";
import { ago, client, jsonArg, output, table, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "nodes", description: "the forge nodes of a cluster (one on a single node), with their last heartbeat" },
  args: { ...jsonArg },
  async run({ args }) {
    const { nodes } = await client().nodes();
    output(Boolean(args.json), nodes, () => {
      const rows = [["NODE", "URL", "DRIVER", "VERSION", "UP", "HEARTBEAT"]];
      for (const n of nodes) rows.push([`${n.id}${n.self ? " *" : ""}`, n.url, n.driver, n.version, ago(Date.now() - n.startedAt), `${ago(Date.now() - n.heartbeatAt)} ago`]);
      ui.log(table(rows));
      if (nodes.length > 1) ui.info("* the node that answered");
    });
  },
});
