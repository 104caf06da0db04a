/** What every CLI command shares: the client from settings, output in text or JSON, errors. */
import { createConsola } from "consola";
import { join } from "node:path";
import { loadClientConfig, type ClientConfig } from "../config.ts";
import { ForgeError, isForgeError } from "../errors.ts";
import { API_KEY_FILE, readSavedApiKey } from "../store/index.ts";
import { ForgeClient } from "./client.ts";
import { resolveConnection, type Connection, type ConnectionFlags } from "./_connection.ts";
import { readTargets, showPath } from "./_targets.ts";

export const ui = createConsola({ level: 3, formatOptions: { date: false, compact: true } });

export const jsonArg = { json: { type: "boolean", description: "print machine-readable JSON", default: false } } as const;

let flags: ConnectionFlags = {};

/** Sets this run's global --target, --url and --key (main.ts takes them out of argv). */
export function setConnectionFlags(f: ConnectionFlags): void {
  flags = { ...f };
}

/** This run's global --target, --url and --key. */
export function connectionFlags(): ConnectionFlags {
  return { ...flags };
}

/** The CLI's settings, with the config file's path as messages show it. */
export function clientSettings(): ClientConfig & { configShown: string } {
  const config = loadClientConfig();
  return { ...config, configShown: showPath(config.configFile, { home: config.home }) };
}

/** The forge to talk to and its key, with where each came from (see resolveConnection for the order). */
export function connection(): Connection {
  const config = clientSettings();
  return resolveConnection({
    flags,
    env: { url: config.url, key: config.apiKey },
    config: readTargets(config.configFile, config.configShown),
    configPath: config.configShown,
    saved: { key: readSavedApiKey(config.dataDir), path: showPath(join(config.dataDir, API_KEY_FILE), { cwd: process.cwd(), home: config.home }) },
  });
}

/** The client every command uses: the resolved forge and key; a refused key names its source. */
export function client(): ForgeClient {
  const c = connection();
  return new ForgeClient(c.url, c.key, c);
}

/** Prints `data` as JSON when --json, else runs `human`. */
export function output(json: boolean, data: unknown, human: () => void): void {
  if (json) process.stdout.write(JSON.stringify(data, null, 2) + "\n");
  else human();
}

/** A value given once or repeated (`--env A=1 --env B=2`) as a list. */
export function many(v: unknown): string[] {
  if (v === undefined || v === null || v === false) return [];
  return (Array.isArray(v) ? v : [v]).map(String);
}

export function intArg(v: unknown, flag: string): number | undefined {
  if (v === undefined || v === "") return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new ForgeError("bad_request", 400, `--${flag} must be a whole number, got ${JSON.stringify(v)}`, { hint: `e.g. --${flag} 2` });
  return n;
}

/** Prints an error as the user should see it: message and hint; system errors with their cause. */
export function printError(err: unknown, json = false): void {
  if (isForgeError(err)) {
    if (json) {
      process.stderr.write(JSON.stringify({ ...err.toJSON(), status: err.status }) + "\n");
      return;
    }
    ui.error(err.message);
    if (err.hint) ui.info(`hint: ${err.hint}`);
    if (!err.isUserError && err.cause) ui.log(`cause: ${err.cause instanceof Error ? err.cause.message : String(err.cause)}`);
    return;
  }
  const e = err as { name?: string; message?: string; code?: string };
  if (e?.name === "CLIError") {
    ui.error(e.message ?? String(err));
    ui.info("hint: see `forge --help`");
    return;
  }
  ui.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
}

export function ago(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const r of rows) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()).join("\n");
}
