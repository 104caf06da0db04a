/**
 * The control-plane API key: FORGE_API_KEY when set, else generated once and kept in the
 * data dir (mode 0600) so it survives restarts and the CLI on the same machine finds it.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";

export const API_KEY_FILE = "api-key";

export function loadOrCreateApiKey(dataDir: string, fromEnv?: string): { key: string; generated: boolean } {
  if (fromEnv) return { key: fromEnv, generated: false };
  const file = join(dataDir, API_KEY_FILE);
  if (existsSync(file)) {
    const key = readFileSync(file, "utf8").trim();
    if (key) return { key, generated: false };
  }
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const key = `forge_${randomBytes(24).toString("base64url")}`;
  writeFileSync(file, key + "\n", { mode: 0o600 });
  return { key, generated: true };
}

/** Keeps `key` in the data dir (mode 0600), where the CLI on this machine looks for it. */
export function saveApiKey(dataDir: string, key: string): void {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dataDir, API_KEY_FILE), key + "\n", { mode: 0o600 });
}

/** The key saved in a data dir, if any (the CLI's fallback when FORGE_API_KEY is unset). */
export function readSavedApiKey(dataDir: string): string | undefined {
  try {
    return readFileSync(join(dataDir, API_KEY_FILE), "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The control-plane key of a cluster (FORGE_DB on Postgres), kept in the shared settings so
 * every node accepts the same one: FORGE_API_KEY when set (it must then match the cluster's,
 * if the cluster has one), else the cluster's, else a new one this node makes.
 */
export async function clusterApiKey(setting: (key: string, initial: string) => Promise<string>, fromEnv?: string): Promise<{ key: string; generated: boolean }> {
  const candidate = fromEnv ?? `forge_${randomBytes(24).toString("base64url")}`;
  const key = await setting("api_key", candidate);
  if (fromEnv && key !== fromEnv) {
    throw new ForgeError(ErrorCode.InvalidConfig, 400, "FORGE_API_KEY differs from the API key the cluster keeps in Postgres", {
      hint: "set the same FORGE_API_KEY on every node, or unset it on this one to use the cluster's",
    });
  }
  return { key, generated: !fromEnv && key === candidate };
}
