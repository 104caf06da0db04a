import { defineCommand } from "citty";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
// Not ../pool: the CLI would load dockerode and the drivers (~150 ms of start-up) for one constant.
import { BUNDLE_FILE, bundleEntry, findEntry, nativePackages, packageClosure, packDir, parseConfigInput, type FunctionConfigInput } from "../build/index.ts";
import { assertName, ErrorCode, ForgeError } from "../errors.ts";
import { client, intArg, jsonArg, many, output, ui } from "./_shared.ts";
import type { DeployEvent, ForgeClient } from "./client.ts";

/** The flags of `forge deploy` that say what to deploy and how (`forge dev` takes them too). */
export const deployArgs = {
  dir: { type: "positional", required: false, description: "function folder (default .)" },
  name: { type: "string", description: "function name (default forge.json name, else the folder name)" },
  env: { type: "string", description: "K=V environment variable (repeatable)" },
  "min-warm": { type: "string", description: "instances kept warm" },
  "max-instances": { type: "string", description: "most instances at once" },
  concurrency: { type: "string", description: "requests one instance serves at once" },
  memory: { type: "string", description: "memory limit per instance, MiB" },
  timeout: { type: "string", description: "request timeout, ms" },
  runtime: { type: "string", description: "bun (default), node, or docker (the folder's Dockerfile)" },
  db: { type: "string", description: "bind a provisioned database as DATABASE_URL (repeatable)" },
} as const;

/** What the deploy flags say, read once from the command line. */
export interface DeployFlags {
  /** --name; else forge.json's name, else the folder's. */
  name?: string;
  /** --env values, laid over forge.json's env. */
  env: Record<string, string>;
  /** The other overrides, as the deploy API takes them (minWarm, runtime, databases...). */
  overrides: Record<string, unknown>;
}

/** A folder packed for upload: the same folder and flags give the same bytes. */
export interface PackedFolder {
  name: string;
  archive: Uint8Array;
  /** The x-forge-config overrides sent with it. */
  overrides: Record<string, unknown>;
  /** sha256 of what is uploaded (archive and overrides), hex. */
  digest: string;
}

export type DeployResult = NonNullable<DeployEvent["result"]>;

/** Reads the deploy flags of `args` (`rawArgs` for the repeatable ones); throws on a bad value. */
export function parseDeployFlags(args: Record<string, unknown>, rawArgs: string[]): DeployFlags {
  const overrides: Record<string, unknown> = {};
  const env: Record<string, string> = {};
  for (const kv of repeated(rawArgs, "env", args.env)) {
    const eq = kv.indexOf("=");
    if (eq <= 0) throw new ForgeError(ErrorCode.BadRequest, 400, `--env ${kv} is not K=V`, { hint: "e.g. --env GREETING=Hello" });
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const ints: [string, string][] = [["min-warm", "minWarm"], ["max-instances", "maxInstances"], ["concurrency", "concurrency"], ["memory", "memoryMb"], ["timeout", "timeoutMs"]];
  for (const [flag, field] of ints) {
    const v = intArg(args[flag], flag);
    if (v !== undefined) overrides[field] = v;
  }
  if (args.runtime !== undefined) overrides.runtime = String(args.runtime);
  const dbs = repeated(rawArgs, "db", args.db);
  if (dbs.length) overrides.databases = dbs;
  return { ...(args.name !== undefined ? { name: String(args.name) } : {}), env, overrides };
}

/**
 * Packs `dir` as `forge deploy` uploads it: forge.json read, the entry bundled here (where the
 * function's node_modules are) unless the runtime is docker. `onProgress` gets the packaging line.
 */
export async function packFolder(dir: string, flags: DeployFlags, onProgress: (line: string) => void = () => {}): Promise<PackedFolder> {
  const file = Bun.file(join(dir, "forge.json"));
  const fromFile = await readForgeJson(dir);
  const name = functionName(dir, flags, fromFile);
  const overrides: Record<string, unknown> = { ...flags.overrides };
  if (Object.keys(flags.env).length) overrides.env = { ...(fromFile.env ?? {}), ...flags.env };
  parseConfigInput(overrides, "deploy flags"); // fail early, before packing

  onProgress(`[1/3] Packaging ${name} from ${dir} ...`);
  let archive: Uint8Array;
  const runtime = (overrides.runtime as FunctionConfigInput["runtime"]) ?? fromFile.runtime ?? "bun";
  if (runtime !== "docker") {
    // Bundle here, where the function's node_modules are, as wrangler does; the whole folder
    // ships with the bundle at its root (its files are read at run time through __dirname,
    // import.meta.dir, process.cwd()), and packages with native addons ship unbundled.
    const tmp = await mkdtemp(join(tmpdir(), "forge-deploy-"));
    try {
      const entry = await findEntry(dir, { ...(fromFile.entry ? { entry: fromFile.entry } : {}), ...(fromFile.handler ? { handler: fromFile.handler } : {}) });
      const out = join(tmp, BUNDLE_FILE);
      const external = await nativePackages(dir);
      await bundleEntry(dir, entry, out, { trusted: true, external, target: runtime });
      const files = [{ path: BUNDLE_FILE, data: new Uint8Array(await Bun.file(out).arrayBuffer()) }];
      if (await file.exists()) files.push({ path: "forge.json", data: new Uint8Array(await file.arrayBuffer()) });
      archive = await packDir(dir, { include: await packageClosure(dir, external), files });
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  } else {
    archive = await packDir(dir);
  }
  const digest = new Bun.CryptoHasher("sha256").update(archive).update(JSON.stringify(overrides)).digest("hex");
  return { name, archive, overrides, digest };
}

/** The fields forge.json of `dir` sets ({} without one); throws InvalidConfig when it is not valid. */
export async function readForgeJson(dir: string): Promise<FunctionConfigInput> {
  const file = Bun.file(join(dir, "forge.json"));
  if (!(await file.exists())) return {};
  let raw: unknown;
  try {
    raw = JSON.parse(await file.text());
  } catch (err) {
    throw new ForgeError(ErrorCode.InvalidConfig, 400, `${join(dir, "forge.json")} is not valid JSON: ${(err as Error).message}`, {
      hint: "fix the syntax of forge.json (a JSON object, no comments or trailing commas)",
    });
  }
  return parseConfigInput(raw, "forge.json");
}

/** The function's name: --name, else forge.json's, else the folder's. */
export function functionName(dir: string, flags: DeployFlags, fromFile: FunctionConfigInput): string {
  return assertName(flags.name ?? fromFile.name ?? basename(dir).toLowerCase());
}

/** Uploads a packed folder; `onProgress` gets the build and start lines as `forge deploy` prints them. */
export async function deployPacked(api: ForgeClient, packed: PackedFolder, onProgress: (line: string) => void = () => {}): Promise<DeployResult> {
  let lastStep = 1;
  return api.deploy(packed.name, packed.archive, packed.overrides, (e) => {
    if (e.type !== "progress" || e.step === undefined) return;
    if (e.step !== lastStep && e.step > 1) {
      lastStep = e.step;
      onProgress(`[${e.step}/${e.of ?? 3}] ${e.phase === "building" ? "Building" : "Starting"} ... ${e.message ?? ""}`.trimEnd());
    } else if (e.step === 2 && e.message) {
      onProgress(`      ${e.message}`);
    }
  });
}

/** Packs `dir` and deploys it: what `forge deploy` does, for any caller. */
export async function deployFolder(dir: string, flags: DeployFlags, onProgress: (line: string) => void = () => {}, api: ForgeClient = client()): Promise<DeployResult> {
  return deployPacked(api, await packFolder(dir, flags, onProgress), onProgress);
}

export default defineCommand({
  meta: { name: "deploy", description: "pack, build and start a function folder" },
  args: { ...deployArgs, ...jsonArg },
  async run({ args, rawArgs }) {
    const dir = resolve(String(args.dir ?? "."));
    const flags = parseDeployFlags(args, rawArgs);
    const result = await deployFolder(dir, flags, (line) => {
      if (!args.json) ui.log(line);
    });
    output(Boolean(args.json), result, () => {
      ui.success(`Deployed ${result.name} version ${result.version}`);
      ui.log(`Your function is live at: ${result.url}`);
    });
  },
});

// --- internal ---

/** Every value of a repeatable flag: citty keeps only the last of `--env A=1 --env B=2`. */
function repeated(rawArgs: string[], flag: string, parsed: unknown): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const a = rawArgs[i] ?? "";
    if (a === `--${flag}` && i + 1 < rawArgs.length) out.push(rawArgs[++i] ?? "");
    else if (a.startsWith(`--${flag}=`)) out.push(a.slice(flag.length + 3));
  }
  return out.length > 0 ? out : many(parsed);
}
