/**
 * The function contract's forge.json (DESIGN §2): every field has a default, flags of
 * `forge deploy` override the file, and a bad field is a 400 naming the field.
 */
import { ErrorCode, ForgeError, NAME_PATTERN, assertName } from "../errors.ts";

/** bun and node run forge's shim (the function contract of DESIGN §2); docker builds the folder's Dockerfile. */
export type FunctionRuntime = "bun" | "node" | "docker";
export const FUNCTION_RUNTIMES: readonly FunctionRuntime[] = ["bun", "node", "docker"];

export interface FunctionConfig {
  name: string;
  /** Entry module, relative to the function folder. Default index.ts (or index.js). */
  entry: string;
  /**
   * Lambda's handler string, `file.export` (e.g. "index.handler", "src/api.main"): the module
   * (without extension) is the entry unless `entry` is set, the export is what the shim calls.
   * Default: none (the module's default export, else its `handler` export).
   */
  handler?: string;
  /** Default bun; node runs the function on Node.js; docker builds the folder's Dockerfile. */
  runtime: FunctionRuntime;
  /** Requests one instance serves at once. Default 8. */
  concurrency: number;
  /** Instances kept running even when idle. Default 0. */
  minWarm: number;
  /** Most instances at once. Default 10. */
  maxInstances: number;
  /** Time a request may run before a 504. Default 30000. */
  timeoutMs: number;
  /** Memory limit of an instance in MiB. Default 128. */
  memoryMb: number;
  /** Environment variables of the function. */
  env: Record<string, string>;
  /** Names of provisioned databases bound as DATABASE_URL. */
  databases: string[];
  /**
   * "egress" (the default): on docker, instances reach the outside through forge's egress
   * network, and neither other instances nor the host. "none": no network at all but the
   * bound databases' (the process driver cannot hold it: processes share the host's network).
   * Optional in the type: configs stored before the field existed lack it, and mean egress.
   */
  network?: FunctionNetwork;
}

/** What a function's instances may reach over the network (forge.json "network"). */
export type FunctionNetwork = "egress" | "none";
export const FUNCTION_NETWORKS: readonly FunctionNetwork[] = ["egress", "none"];

export type FunctionConfigInput = Partial<FunctionConfig>;

export const FUNCTION_DEFAULTS: Omit<FunctionConfig, "name"> = {
  entry: "index.ts",
  runtime: "bun",
  concurrency: 8,
  minWarm: 0,
  maxInstances: 10,
  timeoutMs: 30_000,
  memoryMb: 128,
  env: {},
  databases: [],
  network: "egress",
};

/** Fields PATCH /v1/functions/:name may change. */
export const PATCHABLE_FIELDS = ["minWarm", "maxInstances", "concurrency", "timeoutMs", "memoryMb", "env"] as const;

/** `file.export`: a relative module path without extension, a dot, an identifier. */
const HANDLER = /^[A-Za-z0-9_@-][A-Za-z0-9_@./-]{0,200}\.[A-Za-z_$][A-Za-z0-9_$]{0,100}$/;

/** The module path and export name of a Lambda handler string ("src/api.main" -> ["src/api", "main"]). */
export function splitHandler(handler: string): { module: string; exportName: string } {
  const dot = handler.lastIndexOf(".");
  return { module: handler.slice(0, dot), exportName: handler.slice(dot + 1) };
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Validates an untrusted object (a parsed forge.json, a PATCH body, CLI flags) into a
 * partial config. `source` names where it came from, for the error message.
 */
export function parseConfigInput(raw: unknown, source = "forge.json"): FunctionConfigInput {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw invalid(source, "must be a JSON object", `e.g. {"name": "greet", "entry": "index.ts"}`);
  }
  const o = raw as Record<string, unknown>;
  const out: FunctionConfigInput = {};
  const known = new Set(["name", "entry", "handler", "runtime", "concurrency", "minWarm", "maxInstances", "timeoutMs", "memoryMb", "env", "databases", "network", "$schema", "description"]);
  for (const key of Object.keys(o)) {
    if (!known.has(key)) throw invalid(source, `has an unknown field "${key.slice(0, 40)}"`, `known fields: ${[...known].filter((k) => !k.startsWith("$")).join(", ")}`);
  }
  if (o.name !== undefined) {
    if (typeof o.name !== "string" || !NAME_PATTERN.test(o.name)) throw invalid(source, `"name" must be a DNS label`, "lowercase letters, digits and '-', starting with a letter");
    out.name = o.name;
  }
  if (o.entry !== undefined) {
    if (typeof o.entry !== "string" || o.entry === "" || o.entry.startsWith("/") || o.entry.split(/[\\/]/).includes("..")) {
      throw invalid(source, `"entry" must be a relative path inside the function folder`, `e.g. "index.ts" or "src/main.ts"`);
    }
    out.entry = o.entry;
  }
  if (o.handler !== undefined) {
    if (typeof o.handler !== "string" || !HANDLER.test(o.handler) || o.handler.split("/").includes("..")) {
      throw invalid(source, `"handler" must be "file.export", as on Lambda`, `e.g. "index.handler" or "src/api.main"`);
    }
    out.handler = o.handler;
  }
  if (o.runtime !== undefined) {
    if (!FUNCTION_RUNTIMES.includes(o.runtime as FunctionRuntime)) {
      throw invalid(source, `"runtime" must be "bun", "node" or "docker"`, `"node" runs on Node.js; "docker" needs a Dockerfile serving HTTP on $PORT`);
    }
    out.runtime = o.runtime as FunctionRuntime;
  }
  const ints: [keyof FunctionConfig, number, number][] = [
    ["concurrency", 1, 1000],
    ["minWarm", 0, 100],
    ["maxInstances", 1, 1000],
    ["timeoutMs", 100, 15 * 60_000],
    ["memoryMb", 16, 65_536],
  ];
  for (const [key, min, max] of ints) {
    const v = o[key];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      throw invalid(source, `"${key}" must be a whole number from ${min} to ${max}`, `got ${JSON.stringify(v)?.slice(0, 40)}`);
    }
    (out as Record<string, unknown>)[key] = v;
  }
  if (o.env !== undefined) {
    if (o.env === null || typeof o.env !== "object" || Array.isArray(o.env)) throw invalid(source, `"env" must be an object of strings`, `e.g. {"GREETING": "Hello"}`);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(o.env as Record<string, unknown>)) {
      if (!ENV_NAME.test(k)) throw invalid(source, `env name "${k.slice(0, 40)}" is not a valid variable name`, "use letters, digits and _, not starting with a digit");
      if (typeof v !== "string") throw invalid(source, `env "${k}" must be a string`, `quote it: "${k}": "${String(v).slice(0, 20)}"`);
      env[k] = v;
    }
    out.env = env;
  }
  if (o.databases !== undefined) {
    if (!Array.isArray(o.databases) || !o.databases.every((d) => typeof d === "string" && NAME_PATTERN.test(d))) {
      throw invalid(source, `"databases" must be a list of database service names`, `e.g. ["checkout"]`);
    }
    out.databases = [...(o.databases as string[])];
  }
  if (o.network !== undefined) {
    if (!FUNCTION_NETWORKS.includes(o.network as FunctionNetwork)) {
      throw invalid(source, `"network" must be "egress" or "none"`, `"egress" (the default) reaches the outside; "none" reaches nothing but the bound databases`);
    }
    out.network = o.network as FunctionNetwork;
  }
  return out;
}

/** Merges layers (file, then flags) over the defaults into a full config. */
export function resolveConfig(name: string, ...layers: FunctionConfigInput[]): FunctionConfig {
  assertName(name);
  const merged: FunctionConfig = { ...FUNCTION_DEFAULTS, env: {}, databases: [], name };
  for (const layer of layers) {
    for (const [k, v] of Object.entries(layer)) {
      if (v === undefined) continue;
      if (k === "env") merged.env = { ...merged.env, ...(v as Record<string, string>) };
      else (merged as unknown as Record<string, unknown>)[k] = v;
    }
  }
  merged.name = name;
  if (merged.minWarm > merged.maxInstances) {
    throw new ForgeError(ErrorCode.InvalidConfig, 400, `minWarm (${merged.minWarm}) is above maxInstances (${merged.maxInstances})`, {
      hint: "lower minWarm or raise maxInstances",
    });
  }
  return merged;
}

// --- internal ---

function invalid(source: string, what: string, hint: string): ForgeError {
  return new ForgeError(ErrorCode.InvalidConfig, 400, `${source}: ${what}`, { hint });
}
