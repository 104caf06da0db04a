/**
 * The shim as Node runs it: runtimes/js/shim.ts with runtimes/node/serve.ts (its Bun.serve),
 * bundled into one ES module for `--target node`. Node 20 runs no TypeScript, and a single
 * file is what the process driver copies next to an instance and the node runtime image ships.
 *
 * Built once per content of the sources: the file is named by their digest, so a forge that
 * finds it already built (an earlier start, another instance) reuses it.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, realpath, rename, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ErrorCode, ForgeError } from "../errors.ts";

const RUNTIMES_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../runtimes");
/** Every source the node shim is made of (the bundle's inputs). */
export const NODE_SHIM_SOURCES = ["js/shim.ts", "node/serve.ts"].map((file) => join(RUNTIMES_DIR, file));

/** The node shim's sources' digest: names the built file, and the node image's recipe. */
export async function nodeShimDigest(): Promise<string> {
  const hash = createHash("sha256");
  for (const file of NODE_SHIM_SOURCES) hash.update(await readFile(file));
  return hash.digest("hex").slice(0, 16);
}

/** The node shim as source text (for an image's context). */
export async function bundleNodeShim(): Promise<Uint8Array> {
  const result = await Bun.build({
    entrypoints: [NODE_SHIM_SOURCES[0] as string],
    target: "node",
    format: "esm",
    minify: false,
    throw: false,
  });
  const entry = result.outputs.find((o) => o.kind === "entry-point");
  if (!result.success || !entry || result.outputs.filter((o) => o.kind !== "sourcemap").length !== 1) {
    throw new ForgeError(ErrorCode.InstanceStartFailed, 500, "could not bundle the node shim", {
      hint: "the checkout's runtimes/js and runtimes/node must build with `bun build --target node`",
      cause: new AggregateError(result.logs.map((log) => new Error(String(log)))),
    });
  }
  return new Uint8Array(await entry.arrayBuffer());
}

/**
 * The node shim built into `dir` (`shim-<digest>.mjs`, mode 0644 so instances of other uids
 * read it), built only when that file is not there yet. Resolves with its path.
 */
export async function buildNodeShim(dir: string): Promise<string> {
  const file = join(dir, `shim-${await nodeShimDigest()}.mjs`);
  if (existsSync(file)) return file;
  await mkdir(dir, { recursive: true });
  const code = await bundleNodeShim();
  // Written aside, then renamed: a node instance never starts on half a file.
  const partial = `${file}.${process.pid}.part`;
  await writeFile(partial, code, { mode: 0o644 });
  await rename(partial, file);
  return file;
}

/** A node binary forge can run instances with: its real path and version (v20.20.2 -> "20.20.2"). */
export interface NodeBinary {
  bin: string;
  version: string;
}

/** Node 20.16 is the oldest with what the shim needs (process.getBuiltinModule, import.meta.dirname). */
const OLDEST_NODE = [20, 16];

/**
 * The node binary named by FORGE_NODE_BIN (a path, or a name looked up on PATH), if it runs
 * and is recent enough; else undefined with why, for forge to say at start.
 */
export async function findNode(name: string): Promise<{ node: NodeBinary } | { problem: string }> {
  const bin = name.includes("/") ? resolve(name) : Bun.which(name);
  if (!bin || !existsSync(bin)) return { problem: `no ${name} found${name.includes("/") ? "" : " on PATH"}` };
  try {
    const proc = Bun.spawn([bin, "--version"], { stdout: "pipe", stderr: "ignore", env: {} });
    const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
    const m = /^v(\d+)\.(\d+)\.(\d+)/.exec(out.trim());
    if (code !== 0 || !m) return { problem: `${bin} --version answered ${JSON.stringify(out.trim())} (exit ${code})` };
    const [major, minor] = [Number(m[1]), Number(m[2])];
    if (major < (OLDEST_NODE[0] as number) || (major === OLDEST_NODE[0] && minor < (OLDEST_NODE[1] as number))) {
      return { problem: `${bin} is Node ${m[0]}; the node runtime needs ${OLDEST_NODE.join(".")} or later` };
    }
    return { node: { bin: await realpath(bin), version: `${m[1]}.${m[2]}.${m[3]}` } };
  } catch (err) {
    return { problem: `${bin} could not be run: ${err instanceof Error ? err.message : String(err)}` };
  }
}
