import { defineCommand } from "citty";
import { resolve } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { client, jsonArg, output } from "./_shared.ts";

export default defineCommand({
  meta: { name: "invoke", description: "call a function with a JSON body" },
  args: {
    name: { type: "positional", required: true, description: "function name" },
    data: { type: "string", description: "JSON body, or @file to read it from a file" },
    async: { type: "boolean", description: "queue the invocation and print its id", default: false },
    ...jsonArg,
  },
  async run({ args }) {
    let body: string | undefined;
    if (args.data !== undefined) {
      const d = String(args.data);
      if (d.startsWith("@")) {
        const f = Bun.file(resolve(d.slice(1)));
        if (!(await f.exists())) throw new ForgeError(ErrorCode.BadRequest, 400, `${d.slice(1)} does not exist`, { hint: "pass --data @path/to/file.json" });
        body = await f.text();
      } else body = d;
      try {
        JSON.parse(body);
      } catch {
        throw new ForgeError(ErrorCode.InvalidJson, 400, "--data is not valid JSON", { hint: `e.g. --data '{"name":"World"}' (quote it for your shell)` });
      }
    }
    const res = await client().invoke(String(args.name), body, { async: Boolean(args.async) });
    const text = await res.text();
    if (args.async) {
      const accepted = JSON.parse(text) as { id: string; status: string };
      output(Boolean(args.json), accepted, () => process.stdout.write(accepted.id + "\n"));
      return;
    }
    if (args.json) {
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // keep the text
      }
      output(true, { status: res.status, start: res.headers.get("x-forge-start"), requestId: res.headers.get("x-forge-request-id"), body: parsed }, () => {});
    } else {
      process.stdout.write(text.endsWith("\n") || text === "" ? text : text + "\n");
    }
  },
});
