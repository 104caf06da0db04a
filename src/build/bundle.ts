/**
 * Bundles a function folder's entry module and its imports into one ES module file,
 * the only artifact an instance loads.
 *
 * Source uploaded to the server is untrusted, and `Bun.build` in-process is not safe
 * for it: a `with { type: "macro" }` import runs the uploader's code inside the server
 * at bundle time, and `import x from "/etc/passwd" with { type: "text" }` inlines a file
 * of the server into the bundle. Neither can be switched off through the `Bun.build`
 * API (the process flag `--no-macros` does not reach it), so untrusted source is built
 * by a `bun build --no-macros` child in an empty working folder and its metafile is
 * checked: every input must lie inside the function folder. The CLI bundles the
 * developer's own code on their own machine and passes `trusted: true`, which builds
 * in-process and may resolve packages hoisted above the folder (monorepos).
 */
import { existsSync, statSync } from "node:fs";
import { mkdir, mkdtemp, readdir, realpath, rm } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";

export interface BundleOptions {
  /** The folder is the caller's own code (the CLI): build in-process, allow inputs outside it. Default false. */
  trusted?: boolean;
  /** How long an untrusted build may take before it is killed. Default 60000. */
  timeoutMs?: number;
}

export interface BundleResult {
  /** Size of the bundle in bytes. */
  bytes: number;
  /** sha256 of the bundle, hex. */
  digest: string;
}

/** Entry modules tried, in order, when forge.json names none. */
export const ENTRY_CANDIDATES = ["index.ts", "index.js", "index.mjs", "src/index.ts", "main.ts"] as const;

/**
 * The entry module of `dir`, relative to it: `configured` if given (it must exist),
 * else the first of ENTRY_CANDIDATES that exists. Throws BuildFailed when there is none.
 */
export function findEntry(dir: string, configured?: string): string {
  if (configured !== undefined) {
    if (!isFileInside(dir, configured)) throw entryMissing(configured, true);
    return configured;
  }
  const found = ENTRY_CANDIDATES.find((candidate) => isFileInside(dir, candidate));
  if (found === undefined) throw entryMissing("index.ts", false);
  return found;
}

/**
 * Bundles `entry` (relative to `dir`) and what it imports into the single ES module
 * `outFile`. Throws BuildFailed (400) when the entry is missing or the code does not
 * bundle, with the first build messages in the error.
 */
export async function bundleEntry(dir: string, entry: string, outFile: string, options: BundleOptions = {}): Promise<BundleResult> {
  if (!isFileInside(dir, entry)) throw entryMissing(entry, true);
  await mkdir(dirname(outFile), { recursive: true });
  const code = options.trusted ? await buildInProcess(dir, entry) : await buildInChild(dir, entry, outFile, options.timeoutMs ?? 60_000);
  await Bun.write(outFile, code);
  return { bytes: code.byteLength, digest: new Bun.CryptoHasher("sha256").update(code).digest("hex") };
}

// --- internal ---

const MAX_MESSAGES = 5;
const DEPENDENCY_HINT = "npm install the package in the function folder and deploy with `forge deploy`, which bundles dependencies";
const CODE_HINT = "fix the lines above (run `bun build <entry>` locally to check) and deploy again";

interface BuildMessageLike {
  message: string;
  position?: { file: string; line: number; column: number } | null;
}

async function buildInProcess(dir: string, entry: string): Promise<Uint8Array> {
  const result = await Bun.build({
    entrypoints: [join(dir, entry)],
    target: "bun",
    format: "esm",
    minify: false,
    throw: false,
  });
  if (!result.success) {
    throw buildFailed(result.logs.filter((log) => log.level === "error").map((log) => describe(dir, log)));
  }
  const outputs = result.outputs.filter((o) => o.kind !== "sourcemap");
  const entryPoint = outputs.find((o) => o.kind === "entry-point");
  if (outputs.length !== 1 || entryPoint === undefined) throw notOneFile(outputs.map((o) => o.path));
  return new Uint8Array(await entryPoint.arrayBuffer());
}

async function buildInChild(dir: string, entry: string, outFile: string, timeoutMs: number): Promise<Uint8Array> {
  const root = await realpath(dir);
  // 1. an empty working folder of our own: `bun build` reads bunfig.toml and .env from its cwd
  const work = await mkdtemp(join(dirname(outFile), ".bundle-"));
  try {
    const outDir = join(work, "out");
    const metaFile = join(work, "meta.json");
    // 2. build with macros off; env {} so the child sees none of the server's secrets
    const child = Bun.spawn(
      [
        process.execPath,
        "build",
        "--no-macros",
        "--target=bun",
        "--format=esm",
        "--env=disable",
        `--outdir=${outDir}`,
        `--metafile=${metaFile}`,
        join(root, entry),
      ],
      { cwd: work, env: { NO_COLOR: "1" }, stdin: "ignore", stdout: "ignore", stderr: "pipe", timeout: timeoutMs },
    );
    const [stderr, exitCode] = await Promise.all([new Response(child.stderr).text(), child.exited]);
    if (child.signalCode !== null) {
      throw new ForgeError(ErrorCode.BuildFailed, 400, `bundling ${entry} took longer than ${timeoutMs} ms`, {
        hint: "bundle it locally with `forge deploy`, which uploads a ready bundle",
      });
    }
    if (exitCode !== 0) throw buildFailed(parseCliErrors(root, stderr));

    // 3. every input must come from the function folder
    const meta = (await Bun.file(metaFile).json()) as { inputs?: Record<string, unknown> };
    for (const input of Object.keys(meta.inputs ?? {})) {
      const path = await realpath(resolve(work, input)).catch(() => resolve(work, input));
      if (!isInside(root, path)) {
        // relative, so the message names the import without describing the server's folders
        throw new ForgeError(ErrorCode.BuildFailed, 400, `the code imports ${relative(root, path)}, which is outside the function folder`, {
          hint: "keep everything the function imports inside its folder (npm install packages there), or deploy with `forge deploy`, which bundles dependencies",
        });
      }
    }

    // 4. exactly one output: assets the bundle would load beside it are not shipped
    const outputs = (await readdir(outDir, { recursive: true, withFileTypes: true }))
      .filter((e) => e.isFile() && !e.name.endsWith(".map"))
      .map((e) => join(e.parentPath, e.name));
    const [only] = outputs;
    if (outputs.length !== 1 || only === undefined) throw notOneFile(outputs.map((p) => relative(outDir, p)));
    return new Uint8Array(await Bun.file(only).arrayBuffer());
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** `bun build` prints each error as a code frame, then `error: <message>` and `    at <file>:<line>:<col>`. */
function parseCliErrors(root: string, stderr: string): string[] {
  const lines = stderr.split("\n");
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^error: (.*)$/.exec(lines[i] ?? "");
    if (!m) continue;
    const at = /^\s+at (.+):(\d+):(\d+)$/.exec(lines[i + 1] ?? "");
    const file = at?.[1];
    out.push(file ? `${displayPath(root, file)}:${at[2]}:${at[3]}: ${m[1]}` : (m[1] ?? ""));
  }
  if (out.length === 0 && stderr.trim() !== "") out.push(stderr.trim().split("\n").slice(-3).join(" "));
  return out;
}

function describe(dir: string, log: BuildMessageLike): string {
  const pos = log.position;
  return pos ? `${displayPath(dir, pos.file)}:${pos.line}:${pos.column}: ${log.message}` : log.message;
}

function displayPath(root: string, file: string): string {
  const rel = relative(root, file);
  return rel.startsWith("..") || isAbsolute(rel) ? file : rel;
}

function buildFailed(messages: string[]): ForgeError {
  const shown = messages.slice(0, MAX_MESSAGES);
  const more = messages.length > MAX_MESSAGES ? `\n(and ${messages.length - MAX_MESSAGES} more)` : "";
  const body = shown.length > 0 ? `:\n${shown.join("\n")}${more}` : "";
  const unresolved = messages.some((m) => m.includes("Could not resolve"));
  return new ForgeError(ErrorCode.BuildFailed, 400, `the function does not bundle${body}`, { hint: unresolved ? DEPENDENCY_HINT : CODE_HINT });
}

function notOneFile(paths: string[]): ForgeError {
  return new ForgeError(ErrorCode.BuildFailed, 400, `the bundle needs files beside it (${paths.slice(0, 5).join(", ")})`, {
    hint: "import assets as text or JSON, or fetch them at run time; forge ships one bundle file",
  });
}

function entryMissing(entry: string, configured: boolean): ForgeError {
  return new ForgeError(ErrorCode.BuildFailed, 400, `entry ${entry} not found in the function folder`, {
    hint: configured
      ? `add ${entry} to the folder, or set "entry" in forge.json to the module that exports your handler`
      : `add index.ts (or index.js, index.mjs, src/index.ts, main.ts), or set "entry" in forge.json, e.g. {"entry": "src/server.ts"}`,
  });
}

function isFileInside(dir: string, rel: string): boolean {
  if (rel === "" || isAbsolute(rel) || rel.split(/[\\/]/).includes("..")) return false;
  const path = join(dir, rel);
  return existsSync(path) && statSync(path).isFile();
}

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}
