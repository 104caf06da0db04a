/**
 * Names and labels of forge's containers on the Docker host (DESIGN §7), and the hashes
 * the docker driver writes into labels so a restarted forge can tell its own containers
 * and what they run.
 */
import { createHash } from "node:crypto";
import type { InstanceSpec } from "./driver.ts";

export const LABEL = {
  managed: "dev.forge.managed",
  /** instance | cell | bridge (the socket bridge of a runtime "docker" instance). */
  role: "dev.forge.role",
  function: "dev.forge.function",
  version: "dev.forge.version",
  /** The driver's id of the instance (a bridge carries its instance's). */
  instance: "dev.forge.instance",
  /** Which forge owns it: a hash of its data dir, so forges sharing an engine leave each other alone. */
  owner: "dev.forge.owner",
  runtime: "dev.forge.runtime",
  /** Host folder bind-mounted at /run/forge (the socket lives there). */
  dir: "dev.forge.dir",
  /** The shim's control token: a restarted forge needs it to health-check and adopt. */
  token: "dev.forge.token",
  /** Hash of what the instance runs (image, folder, handler, timeout, env, memory, networks): adopted only for an equal spec. */
  spec: "dev.forge.spec",
} as const;

export type ContainerRole = "instance" | "cell" | "bridge";

/** The owner label's value for a data dir (its absolute path, hashed). */
export function ownerOf(dataDir: string): string {
  return createHash("sha256").update(dataDir).digest("hex").slice(0, 16);
}

/** forge-fn-<name>-v<version>-<id>, forge-cell-<runtime>-<id> (DESIGN §7); a bridge adds -bridge. */
export function containerName(spec: InstanceSpec, role: ContainerRole): string {
  const base =
    spec.role === "cell" || spec.function === undefined
      ? `forge-cell-${spec.runtime}-${spec.id}`
      : functionContainerName(spec.function, spec.version ?? 0, spec.id);
  return role === "bridge" ? `${base}-bridge` : base;
}

/** forge-fn-<name>-v<version>-<id>: a function's instance, and the name a cell takes once specialized. */
export function functionContainerName(fn: string, version: number, id: string): string {
  return `forge-fn-${fn}-v${version}-${id}`;
}

/** What must be equal for a container of an earlier run to serve a new request for `spec`. */
export function specHash(spec: InstanceSpec, image: string): string {
  const env = Object.entries(spec.env).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash("sha256")
    .update(JSON.stringify([spec.runtime, image, spec.bundlePath ?? null, spec.artifactDir ?? null, spec.handler ?? null, spec.timeoutMs ?? null, spec.memoryMb, env, spec.networks ?? []]))
    .digest("hex")
    .slice(0, 24);
}
