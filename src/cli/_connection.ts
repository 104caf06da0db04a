/**
 * Which forge the CLI talks to, and with which key: the global flags, the environment, the
 * config file's targets and the key a local forge saved, in that order. A pure function of
 * its inputs (tests give it any), that also says where each part came from, so a refused key
 * can name its source.
 */
import { DEFAULT_FORGE_URL } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { CredentialSource } from "./client.ts";
import { assertTargetName, type Target, type TargetsFile } from "./_targets.ts";

/** The flags every command takes, before its own. */
export interface ConnectionFlags {
  /** --target NAME: a target of the config file. */
  target?: string;
  /** --url URL: overrides the URL from anywhere else. */
  url?: string;
  /** --key KEY: overrides the key from anywhere else. */
  key?: string;
}

const GLOBAL_FLAGS = ["target", "url", "key"] as const;

export interface ConnectionInputs {
  flags: ConnectionFlags;
  /** FORGE_URL and FORGE_API_KEY. */
  env: { url?: string | undefined; key?: string | undefined };
  /** The config file's targets. */
  config: TargetsFile;
  /** The config file's path, as messages show it. */
  configPath: string;
  /** The key a forge saved in FORGE_DATA_DIR (./.forge/api-key), and that file as messages show it. */
  saved: { key?: string | undefined; path: string };
}

export interface Connection extends CredentialSource {
  url: string;
  key: string | undefined;
  /** The config file's target in use (for its URL or key), if any. */
  target: string | undefined;
}

/**
 * The URL: --url, else --target's, else FORGE_URL, else the current target's, else the default.
 * The key: --key, else --target's, else FORGE_API_KEY, else the current target's (only when
 * the URL is that target's: its key is not sent to another forge), else ./.forge/api-key.
 * An explicit --target comes before the environment: it is a flag.
 */
export function resolveConnection(inputs: ConnectionInputs): Connection {
  const { flags, env, config, configPath, saved } = inputs;
  const inTarget = (name: string): string => `target ${name} in ${configPath}`;
  let picked: [string, Target] | undefined;
  if (flags.target !== undefined) {
    const t = targetOf(config, assertTargetName(flags.target));
    if (!t) {
      const names = Object.keys(config.targets);
      throw new ForgeError(ErrorCode.NotFound, 404, `there is no target ${JSON.stringify(flags.target)} in ${configPath}`, {
        hint: `${names.length ? `its targets: ${names.join(", ")}. ` : ""}add it with \`forge login --url URL --target ${flags.target}\``,
      });
    }
    picked = [flags.target, t];
  }
  const currentTarget = config.current === undefined ? undefined : targetOf(config, config.current);
  const current: [string, Target] | undefined = config.current !== undefined && currentTarget ? [config.current, currentTarget] : undefined;

  let url: string;
  let urlFrom: string;
  if (flags.url !== undefined) [url, urlFrom] = [checkUrl(flags.url, "--url"), "--url"];
  else if (picked) [url, urlFrom] = [picked[1].url, inTarget(picked[0])];
  else if (env.url) [url, urlFrom] = [env.url, "FORGE_URL"];
  else if (current) [url, urlFrom] = [current[1].url, inTarget(current[0])];
  else [url, urlFrom] = [DEFAULT_FORGE_URL, "the default"];

  const login = `forge login --url ${url}`;
  const currentFits = current !== undefined && sameUrl(current[1].url, url);
  const looked = [
    "--key",
    "FORGE_API_KEY",
    current ? `${inTarget(current[0])}${currentFits ? "" : ` (it is for ${current[1].url})`}` : `${configPath} (no current target)`,
    saved.path,
  ];
  const base = { url, urlFrom, looked };
  const targetFix = (name: string): string => `save the right key with \`forge login --target ${name}${sameUrl(targetOf(config, name)?.url ?? "", url) ? "" : ` --url ${url}`}\` (forge up prints the key), or pick another target (\`forge targets\`)`;
  if (flags.key !== undefined && flags.key !== "") {
    return { ...base, key: flags.key, target: picked?.[0], keyFrom: { from: "--key", fix: "check the key given with --key (forge up prints it), or leave --key out to use a saved target" } };
  }
  if (picked) return { ...base, key: picked[1].key, target: picked[0], keyFrom: { from: inTarget(picked[0]), fix: targetFix(picked[0]) } };
  if (env.key) {
    return { ...base, key: env.key, target: undefined, keyFrom: { from: "FORGE_API_KEY", fix: `FORGE_API_KEY comes before the saved targets: set it to the key forge up printed, or unset it and run \`${login}\`` } };
  }
  if (current && currentFits) return { ...base, key: current[1].key, target: current[0], keyFrom: { from: inTarget(current[0]), fix: targetFix(current[0]) } };
  if (saved.key) {
    return { ...base, key: saved.key, target: undefined, keyFrom: { from: saved.path, fix: `that file holds the key of the forge started with this data folder; for the forge at ${url}, run \`${login}\` and give it the key its forge up printed` } };
  }
  return { ...base, key: undefined, target: undefined, keyFrom: undefined };
}

/**
 * Takes --target, --url and --key (and --x=value) out of argv, wherever they are, up to a
 * `--`; the rest goes to the command.
 */
export function takeConnectionFlags(argv: string[]): { argv: string[]; flags: ConnectionFlags } {
  const rest: string[] = [];
  const flags: ConnectionFlags = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? "";
    if (a === "--") {
      rest.push(...argv.slice(i));
      break;
    }
    const flag = GLOBAL_FLAGS.find((f) => a === `--${f}` || a.startsWith(`--${f}=`));
    if (!flag) {
      rest.push(a);
      continue;
    }
    let value: string | undefined;
    if (a.includes("=")) value = a.slice(a.indexOf("=") + 1);
    else value = argv[++i];
    // `--key --json` is a forgotten value, not a key named "--json" (forge's keys never start with "-").
    if (value === undefined || (!a.includes("=") && value.startsWith("--"))) {
      throw new ForgeError(ErrorCode.BadRequest, 400, `--${flag} needs a value`, { hint: { target: "e.g. --target local", url: "e.g. --url http://127.0.0.1:8080", key: "e.g. --key $KEY" }[flag] });
    }
    flags[flag] = value;
  }
  return { argv: rest, flags };
}

/** `text` if it is an http(s) URL, else a user error naming `what`. */
export function checkUrl(text: string, what: string): string {
  try {
    const u = new URL(text);
    if (u.protocol === "http:" || u.protocol === "https:") return text;
  } catch {
    // fall through to the error
  }
  throw new ForgeError(ErrorCode.BadRequest, 400, `${what} ${JSON.stringify(text)} is not an http(s) URL`, { hint: `e.g. ${what} http://127.0.0.1:8080` });
}

// --- internal ---

/** The file's target `name`: its own entries only (not `constructor`, `toString`, ... of an object). */
function targetOf(config: TargetsFile, name: string): Target | undefined {
  return Object.hasOwn(config.targets, name) ? config.targets[name] : undefined;
}

function sameUrl(a: string, b: string): boolean {
  const norm = (u: string): string => {
    try {
      return new URL(u).href.replace(/\/+$/, "");
    } catch {
      return u;
    }
  };
  return norm(a) === norm(b);
}
