/**
 * A node's id: FORGE_NODE_ID, else made once from the host name and kept in the data dir, so
 * a node restarted on the same folder is the same node (its containers, its row in the list).
 */
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";

const NODE_ID_FILE = "node-id";

export function loadOrCreateNodeId(dataDir: string, fromEnv?: string): string {
  if (fromEnv) return fromEnv;
  const file = join(dataDir, NODE_ID_FILE);
  if (existsSync(file)) {
    const id = readFileSync(file, "utf8").trim();
    if (/^[a-z0-9][a-z0-9-]{0,62}$/.test(id)) return id;
  }
  const host = hostname().toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "node";
  const id = `${/^[a-z0-9]/.test(host) ? host : `n${host}`}-${randomBytes(3).toString("hex")}`;
  writeFileSync(file, id + "\n", { mode: 0o600 });
  return id;
}
