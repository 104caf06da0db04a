import { defineCommand } from "citty";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join, resolve } from "node:path";
// Not ../pool: the CLI would load dockerode and the drivers (~150 ms of start-up) for one constant.
import { BUNDLE_FILE, bundleEntry, findEntry, nativePackages, packageClosure, packDir, parseConfigInput, type FunctionConfigInput } from "../build/index.ts";
import { assertName, ErrorCode, ForgeError } from "../errors.ts";
import { client, intArg, jsonArg, many, output, ui } from "./_shared.ts";

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

export default defineCommand({
  meta: { name: "deploy", description: "pack, build and start a function folder" },
  args: {
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
    ...jsonArg,
  },
  async run({ args, rawArgs }) {
    const dir = resolve(String(args.dir ?? "."));
    const file = Bun.file(join(dir, "forge.json"));
    let fromFile: FunctionConfigInput = {};
    if (await file.exists()) {
      let raw: unknown;
      try {
        raw = JSON.parse(await file.text());
      } catch (err) {
        throw new ForgeError(ErrorCode.InvalidConfig, 400, `${join(dir, "forge.json")} is not valid JSON: ${(err as Error).message}`, {
          hint: "fix the syntax of forge.json (a JSON object, no comments or trailing commas)",
        });
      }
      fromFile = parseConfigInput(raw, "forge.json");
    }
    const name = assertName(String(args.name ?? fromFile.name ?? basename(dir).toLowerCase()));

    const flags: Record<string, unknown> = {};
    const env: Record<string, string> = {};
    for (const kv of repeated(rawArgs, "env", args.env)) {
      const eq = kv.indexOf("=");
      if (eq <= 0) throw new ForgeError(ErrorCode.BadRequest, 400, `--env ${kv} is not K=V`, { hint: "e.g. --env GREETING=Hello" });
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    if (Object.keys(env).length) flags.env = { ...(fromFile.env ?? {}), ...env };
    const ints: [string, string][] = [["min-warm", "minWarm"], ["max-instances", "maxInstances"], ["concurrency", "concurrency"], ["memory", "memoryMb"], ["timeout", "timeoutMs"]];
    for (const [flag, field] of ints) {
      const v = intArg(args[flag], flag);
      if (v !== undefined) flags[field] = v;
    }
    if (args.runtime !== undefined) flags.runtime = String(args.runtime);
    const dbs = repeated(rawArgs, "db", args.db);
    if (dbs.length) flags.databases = dbs;
    parseConfigInput(flags, "deploy flags"); // fail early, before packing

    const say = (line: string): void => {
      if (!args.json) ui.log(line);
    };
    say(`[1/3] Packaging ${name} from ${dir} ...`);
    let archive: Uint8Array;
    const runtime = (flags.runtime as FunctionConfigInput["runtime"]) ?? fromFile.runtime ?? "bun";
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

    let lastStep = 1;
    const result = await client().deploy(name, archive, flags, (e) => {
      if (e.type !== "progress" || e.step === undefined) return;
      if (e.step !== lastStep && e.step > 1) {
        lastStep = e.step;
        say(`[${e.step}/${e.of ?? 3}] ${e.phase === "building" ? "Building" : "Starting"} ... ${e.message ?? ""}`.trimEnd());
      } else if (e.step === 2 && e.message && !args.json) {
        ui.log(`      ${e.message}`);
      }
    });
    output(Boolean(args.json), result, () => {
      ui.success(`Deployed ${result.name} version ${result.version}`);
      ui.log(`Your function is live at: ${result.url}`);
    });
  },
});
