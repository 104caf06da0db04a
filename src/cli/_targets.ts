/**
 * The CLI's config file of targets (`$XDG_CONFIG_HOME/forge/config.json`): a named URL and API
 * key each, and the current one. `forge up` and `forge login` write it; every command reads it.
 * It holds keys, so the file is 0600 in a 0700 folder, and each write replaces it whole
 * (a temp file renamed over it), so a reader never sees half a file.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, isAbsolute, relative, sep } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";

export interface Target {
  url: string;
  key: string;
}

export interface TargetsFile {
  /** The target commands use when no --target is given. */
  current?: string;
  targets: Record<string, Target>;
}

/** Letters, digits and . _ : - (a host name with its port fits), at most 64. */
const TARGET_NAME = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

export function isTargetName(name: string): boolean {
  return TARGET_NAME.test(name);
}

export function assertTargetName(name: string): string {
  if (!isTargetName(name)) {
    throw new ForgeError(ErrorCode.BadRequest, 400, `--target ${JSON.stringify(name)} is not a target name`, {
      hint: "letters, digits and . _ : - (at most 64), e.g. --target local or --target prod",
    });
  }
  return name;
}

/** The targets in `path`; none when the file does not exist. */
export function readTargets(path: string, shown = path): TargetsFile {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { targets: noTargets() };
    throw new ForgeError(ErrorCode.InvalidConfig, 400, `cannot read ${shown}: ${(err as Error).message}`, { hint: "check the file's owner and mode (0600)" });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw invalid(shown, "it is not JSON");
  }
  if (!isRecord(parsed) || !isRecord(parsed.targets)) throw invalid(shown, 'it has no "targets" object');
  const targets = noTargets();
  for (const [name, t] of Object.entries(parsed.targets)) {
    if (!isRecord(t) || typeof t.url !== "string" || typeof t.key !== "string") throw invalid(shown, `target ${JSON.stringify(name)} needs a "url" and a "key" string`);
    targets[name] = { url: t.url, key: t.key };
  }
  const current = typeof parsed.current === "string" && parsed.current in targets ? parsed.current : undefined;
  return { ...(current ? { current } : {}), targets };
}

/** Writes `file` to `path` atomically, 0600 in a 0700 folder. */
export function writeTargets(path: string, file: TargetsFile): void {
  const dir = dirname(path);
  mkdirSync(dirname(dir), { recursive: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700); // also when it was made by hand, wider: it holds keys
  const tmp = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    writeFileSync(tmp, JSON.stringify(file, null, 2) + "\n", { mode: 0o600 });
    chmodSync(tmp, 0o600); // writeFileSync's mode only applies to a new file, and through the umask
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * Reads, changes and writes the file. Two writers at the same moment can lose one change
 * (last rename wins); the file itself is never torn.
 */
export function updateTargets<T>(path: string, change: (file: TargetsFile) => T, shown = path): T {
  const file = readTargets(path, shown);
  const result = change(file);
  writeTargets(path, file);
  return result;
}

/** `path` for messages: under `cwd` (when given) as ./..., else under `home` as ~/..., else as is. */
export function showPath(path: string, where: { home?: string; cwd?: string }): string {
  const { home, cwd } = where;
  if (cwd) {
    const inCwd = relative(cwd, path);
    if (inCwd && !inCwd.startsWith("..") && !isAbsolute(inCwd)) return `.${sep}${inCwd}`;
  }
  if (home && home !== sep && path.startsWith(home + sep)) return `~${path.slice(home.length)}`;
  return path;
}

// --- internal ---

/**
 * An empty map of targets with no prototype: a name is a target only when the file has it
 * (`--target constructor` or `toString` is not one, a "__proto__" in the file is a plain name).
 */
function noTargets(): Record<string, Target> {
  return Object.create(null) as Record<string, Target>;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function invalid(shown: string, why: string): ForgeError {
  return new ForgeError(ErrorCode.InvalidConfig, 400, `${shown} is not a forge config file: ${why}`, {
    hint: 'it looks like {"current": "local", "targets": {"local": {"url": "http://127.0.0.1:8080", "key": "..."}}}; fix it, or move it away and run `forge login` again',
  });
}
