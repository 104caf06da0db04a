/** forge's own logger: consola, pretty for people or JSON lines (FORGE_LOG_FORMAT=json) for machines. */
import { createConsola, type ConsolaInstance, type LogObject } from "consola";
import type { LogFormat } from "../config.ts";

export function createLogger(format: LogFormat, level = 3): ConsolaInstance {
  if (format === "pretty") return createConsola({ level, formatOptions: { date: true, compact: true } });
  return createConsola({
    level,
    reporters: [
      {
        log(obj: LogObject) {
          const [first, ...rest] = obj.args;
          const extra: Record<string, unknown> = {};
          const msgParts: string[] = [typeof first === "string" ? first : JSON.stringify(first)];
          for (const a of rest) {
            if (a instanceof Error) extra.error = { name: a.name, message: a.message, stack: a.stack };
            else if (a && typeof a === "object" && !Array.isArray(a)) Object.assign(extra, a);
            else if (a !== "" && a !== undefined) msgParts.push(String(a));
          }
          const line = { time: obj.date.toISOString(), level: obj.type, msg: msgParts.join(" "), ...(obj.tag ? { tag: obj.tag } : {}), ...extra };
          (obj.level <= 1 ? process.stderr : process.stdout).write(JSON.stringify(line) + "\n");
        },
      },
    ],
  });
}
