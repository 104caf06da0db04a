import { defineCommand } from "citty";
import { client, jsonArg, ui } from "./_shared.ts";
import { lines as ndjsonLines } from "./client.ts";

export interface LogLine {
  ts: number;
  instance: string;
  stream: string;
  requestId?: string;
  text: string;
  version: number;
  /** The node that wrote it (several nodes). */
  node?: string;
}

export default defineCommand({
  meta: { name: "logs", description: "a function's logs; -f follows new lines until Ctrl-C" },
  args: {
    name: { type: "positional", required: true, description: "function name" },
    follow: { type: "boolean", alias: "f", description: "keep printing new lines", default: false },
    since: { type: "string", description: "only lines newer than this (10m, 1h, or an ISO time)" },
    request: { type: "string", description: "only lines of this request id" },
    limit: { type: "string", description: "at most this many past lines (default 1000)" },
    ...jsonArg,
  },
  async run({ args }) {
    const q = new URLSearchParams();
    if (args.since) q.set("since", String(args.since));
    if (args.request) q.set("request", String(args.request));
    if (args.limit) q.set("limit", String(args.limit));
    const print = (l: LogLine): void => {
      process.stdout.write(args.json ? JSON.stringify(l) + "\n" : formatLogLine(l));
    };
    const path = `/v1/functions/${encodeURIComponent(String(args.name))}/logs`;
    if (!args.follow) {
      const res = await client().request("GET", `${path}?${q}`);
      const { lines } = (await res.json()) as { lines: LogLine[] };
      for (const l of lines) print(l);
      if (!args.json && lines.length === 0) ui.info("no log lines yet");
      return;
    }
    q.set("follow", "1");
    const controller = new AbortController();
    const onSignal = (): void => controller.abort();
    process.once("SIGINT", onSignal);
    process.once("SIGTERM", onSignal);
    try {
      const res = await client().request("GET", `${path}?${q}`, { signal: controller.signal });
      for await (const raw of ndjsonLines(res)) print(JSON.parse(raw) as LogLine);
    } catch (err) {
      // Ctrl-C ends a follow: that is the normal way out, not an error.
      if (!controller.signal.aborted) throw err;
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  },
});

/** One log line as `forge logs` prints it: time, node, instance, version, [request id], text. */
export function formatLogLine(l: LogLine): string {
  return `${new Date(l.ts).toISOString()} ${l.node ? `${l.node} ` : ""}${l.instance.slice(0, 8)} v${l.version}${l.requestId ? ` [${l.requestId}]` : ""} ${l.stream === "stderr" ? "! " : ""}${l.text}\n`;
}
