/**
 * Runtime images built from what this machine has, since no registry can be reached:
 *
 * - `forge/runtime-bun:<bun version>` (runtimes/bun/Dockerfile): FROM scratch, the bun binary
 *   running forge plus the glibc files `ldd` lists for it, forge's shim and socket bridge.
 *   A context of ~110 MB made in memory; builds in a few seconds.
 * - `forge/runtime-node:<node version>` (runtimes/node/Dockerfile): the same, with the host's
 *   node binary and the shim bundled for Node (src/build/node-shim.ts).
 * - `forge/postgres:<major>` (runtimes/postgres/): `debootstrap --variant=minbase` (the rootfs
 *   tarball is cached, so a rebuild skips the download), `apt-get install postgresql-<major>`
 *   in a chroot, the entrypoint, then `docker import` with the recipe's CMD/ENV/USER.
 *
 * Idempotent: an image that exists and was built from the same recipe (label
 * dev.forge.recipe) is kept; one built from an older recipe is rebuilt; an image forge did
 * not build (a user's own, from a registry) is used as is unless `force`.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { access, chmod, chown, mkdir, mkdtemp, readFile, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { constants } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import type Dockerode from "dockerode";
import { ErrorCode, ForgeError } from "../errors.ts";
import { buildImage, contextTar, IMAGE_LABELS, labelLine, type ContextEntry } from "./images.ts";
import { bundleNodeShim, findNode, nodeShimDigest } from "./node-shim.ts";

export type RuntimeName = "bun" | "node" | "postgres";

export const RUNTIME_NAMES: readonly RuntimeName[] = ["bun", "node", "postgres"];

const RUNTIMES_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../runtimes");

/**
 * The default image name of a runtime: forge/runtime-bun:<version of the running bun>,
 * forge/runtime-node:<version of the node binary> (`nodeVersion`), forge/postgres:<major>.
 */
export function defaultRuntimeImage(which: RuntimeName, nodeVersion?: string): string {
  if (which === "node") return `forge/runtime-node:${nodeVersion ?? "unknown"}`;
  return which === "bun" ? `forge/runtime-bun:${Bun.version}` : `forge/postgres:${POSTGRES_MAJOR}`;
}

export interface RuntimeImageOptions {
  /** Image name to build. Default defaultRuntimeImage(which). */
  image?: string;
  /** Rebuild even when the image is present. Default false. */
  force?: boolean;
  /** Build output, line by line. */
  onLog?: (line: string) => void;
  /** bun: the binary to ship. Default the bun running forge (its version names the image). */
  bunPath?: string;
  /** node: the binary to ship. Default FORGE_NODE_BIN's (node on PATH); its version names the image. */
  nodePath?: string;
  /** postgres: where the debootstrap rootfs tarball is cached. Default /var/cache/forge when writable, else ~/.cache/forge. */
  cacheDir?: string;
  /** postgres: the Debian mirror. Default the recipe's (deb.debian.org). */
  mirror?: string;
}

export interface RuntimeImageResult {
  image: string;
  /** False when the image was already present and current. */
  built: boolean;
  /** Why it was (not) built, for the CLI and `forge up` to say. */
  reason: string;
  ms: number;
}

/** What is on the engine under a runtime image's name, compared with the recipe. */
export type RuntimeImageState = "missing" | "current" | "outdated" | "foreign";

/** Is `image` present, and was it built from the current recipe of `which`? */
export async function runtimeImageState(
  docker: Dockerode,
  which: RuntimeName,
  image = defaultRuntimeImage(which),
  binaries: Pick<RuntimeImageOptions, "bunPath" | "nodePath"> = {},
): Promise<RuntimeImageState> {
  const labels = await docker
    .getImage(image)
    .inspect()
    .then((info) => info.Config?.Labels ?? {})
    .catch((err: unknown) => {
      if ((err as { statusCode?: number }).statusCode === 404) return undefined;
      throw err;
    });
  if (!labels) return "missing";
  const built = labels[IMAGE_LABELS.recipe];
  if (built === undefined) return "foreign";
  const recipe = which === "bun" ? await bunRecipe(binaries.bunPath) : which === "node" ? await nodeRecipe(binaries.nodePath) : await postgresRecipe();
  return built === recipe.hash ? "current" : "outdated";
}

/** Builds a runtime image unless it is present and current (see the module comment). */
export async function buildRuntimeImage(docker: Dockerode, which: RuntimeName, options: RuntimeImageOptions = {}): Promise<RuntimeImageResult> {
  const image = options.image ?? defaultRuntimeImage(which, which === "node" ? (await nodeRecipe(options.nodePath)).version : undefined);
  const started = performance.now();
  const state = await runtimeImageState(docker, which, image, options);
  const ms = () => Math.round(performance.now() - started);
  if (!options.force && (state === "current" || state === "foreign")) {
    return { image, built: false, reason: state === "current" ? "present" : "present (not built by forge: used as is)", ms: ms() };
  }
  const reason = options.force ? "forced" : state === "missing" ? "missing" : "built from an older recipe";
  const previous = await docker
    .getImage(image)
    .inspect()
    .then((info) => info.Id)
    .catch(() => undefined);
  if (which === "bun") await buildBun(docker, image, options);
  else if (which === "node") await buildNode(docker, image, options);
  else await buildPostgres(docker, image, options);
  // The image the tag left behind: removed unless a container still runs it (then it stays).
  const current = await docker
    .getImage(image)
    .inspect()
    .then((info) => info.Id)
    .catch(() => undefined);
  if (previous && current && previous !== current) await docker.getImage(previous).remove().catch(() => undefined);
  return { image, built: true, reason, ms: ms() };
}

// --- bun ---

interface BunRecipe {
  hash: string;
  /** The binary that goes in (real path). */
  bin: string;
  libs: string[];
}

async function bunRecipe(bunPath?: string): Promise<BunRecipe> {
  const bin = await realpath(bunPath ?? process.execPath);
  const libs = await linkedLibraries(bin);
  const info = await stat(bin);
  const hash = createHash("sha256");
  for (const file of ["bun/Dockerfile", "js/shim.ts", "bun/bridge.ts"]) hash.update(await readFile(join(RUNTIMES_DIR, file)));
  // The binary is 100 MB: its version, size and time stand for its content.
  hash.update(JSON.stringify({ version: bunPath ? null : Bun.version, size: info.size, mtime: info.mtimeMs, libs }));
  return { hash: hash.digest("hex").slice(0, 32), bin, libs };
}

/** The shared libraries `ldd` lists for a binary, loader included (none for a static one). */
async function linkedLibraries(bin: string): Promise<string[]> {
  const proc = Bun.spawn(["ldd", bin], { stdout: "pipe", stderr: "pipe" });
  const [out, code] = await Promise.all([new Response(proc.stdout).text(), proc.exited]);
  if (code !== 0) return []; // "not a dynamic executable"
  const libs: string[] = [];
  for (const line of out.split("\n")) {
    const path = /=>\s*(\/\S+)/.exec(line)?.[1] ?? /^\s*(\/\S+)\s+\(/.exec(line)?.[1];
    if (path) libs.push(path);
  }
  return libs.sort();
}

async function buildBun(docker: Dockerode, image: string, options: RuntimeImageOptions): Promise<void> {
  const recipe = await bunRecipe(options.bunPath);
  const labels = { [IMAGE_LABELS.recipe]: recipe.hash, "dev.forge.runtime": "bun", "dev.forge.bun-version": options.bunPath ? "custom" : Bun.version };
  await buildLanguageImage(docker, image, "bun", {
    labels,
    binary: recipe.bin,
    libs: recipe.libs,
    files: [
      { path: "rootfs/forge/shim.ts", data: await readFile(join(RUNTIMES_DIR, "js/shim.ts")) },
      { path: "rootfs/forge/bridge.ts", data: await readFile(join(RUNTIMES_DIR, "bun/bridge.ts")) },
    ],
    onLog: options.onLog,
  });
}

// --- node ---

interface NodeRecipe extends BunRecipe {
  version: string;
}

async function nodeRecipe(nodePath?: string): Promise<NodeRecipe> {
  const found = await findNode(nodePath ?? "node");
  if ("problem" in found) {
    throw new ForgeError(ErrorCode.DriverUnavailable, 503, `the node runtime image needs a node binary: ${found.problem}`, {
      hint: "install Node.js 20.16 or later, or set FORGE_NODE_BIN to its path",
    });
  }
  const { bin, version } = found.node;
  const libs = await linkedLibraries(bin);
  const hash = createHash("sha256");
  hash.update(await readFile(join(RUNTIMES_DIR, "node/Dockerfile")));
  hash.update(await nodeShimDigest());
  const info = await stat(bin);
  hash.update(JSON.stringify({ version, size: info.size, mtime: info.mtimeMs, libs }));
  return { hash: hash.digest("hex").slice(0, 32), bin, libs, version };
}

async function buildNode(docker: Dockerode, image: string, options: RuntimeImageOptions): Promise<void> {
  const recipe = await nodeRecipe(options.nodePath);
  const labels = { [IMAGE_LABELS.recipe]: recipe.hash, "dev.forge.runtime": "node", "dev.forge.node-version": recipe.version };
  await buildLanguageImage(docker, image, "node", {
    labels,
    binary: recipe.bin,
    libs: recipe.libs,
    files: [{ path: "rootfs/forge/shim.mjs", data: await bundleNodeShim() }],
    onLog: options.onLog,
  });
}

// --- what the bun and node images share ---

/**
 * A FROM-scratch image of one language runtime (runtimes/<name>/Dockerfile): its binary at
 * /usr/local/bin/<name>, the shared libraries it links, forge's files, and a user 1000
 * every instance runs as. A third runtime (Python, say) is a folder under runtimes/ with
 * its Dockerfile and shim, and a recipe here saying which binary and files go in.
 */
async function buildLanguageImage(
  docker: Dockerode,
  image: string,
  name: string,
  recipe: { labels: Record<string, string>; binary: string; libs: string[]; files: ContextEntry[]; onLog: ((line: string) => void) | undefined },
): Promise<void> {
  const files: ContextEntry[] = [
    { path: `rootfs/usr/local/bin/${name}`, type: "disk", from: recipe.binary, size: (await stat(recipe.binary)).size, mode: 0o755 },
    ...recipe.files,
    { path: "rootfs/etc/passwd", data: "root:x:0:0:root:/root:/sbin/nologin\nforge:x:1000:1000:forge function:/tmp:/sbin/nologin\n" },
    { path: "rootfs/etc/group", data: "root:x:0:\nforge:x:1000:\n" },
  ];
  for (const lib of recipe.libs) {
    // Stored at the path ldd printed (the loader's path is baked into the binary), as a file.
    const real = await realpath(lib);
    files.push({ path: `rootfs${lib}`, type: "disk", from: real, size: (await stat(real)).size, mode: 0o755 });
  }
  // Folders first, parents before children; /tmp 1777 since Docker copies it onto the tmpfs.
  const special: Record<string, number> = { "rootfs/tmp": 0o1777 };
  const dirs = new Set<string>(["rootfs", "rootfs/tmp", "rootfs/run/forge", "rootfs/app"]);
  for (const file of files) {
    for (let d = dirname(file.path); d !== "." && d !== "/"; d = dirname(d)) dirs.add(d);
  }
  for (const d of [...dirs]) for (let p = dirname(d); p !== "."; p = dirname(p)) dirs.add(p);
  const entries: ContextEntry[] = [
    { path: "Dockerfile", data: (await readFile(join(RUNTIMES_DIR, name, "Dockerfile"), "utf8")) + labelLine(recipe.labels) },
    ...[...dirs].sort().map((path): ContextEntry => ({ path, type: "directory", mode: special[path] ?? 0o755 })),
    ...files,
  ];
  await buildImage(docker, contextTar(entries), {
    tag: image,
    ...(recipe.onLog ? { onLog: recipe.onLog } : {}),
    what: image,
    failStatus: 500,
    failHint: `see the build log above; \`forge images build ${name} --force\` retries from scratch`,
  });
}

// --- postgres ---

interface PostgresRecipeFile {
  major: number;
  suite: string;
  variant: string;
  mirror: string;
  packages: string[];
  changes: string[];
}

const POSTGRES_MAJOR = 15;
/** Bump when buildPostgres changes what goes into the image, so present images are rebuilt. */
const POSTGRES_BUILD_REVISION = 2;

async function postgresRecipe(): Promise<PostgresRecipeFile & { hash: string; entrypoint: Buffer }> {
  const raw = await readFile(join(RUNTIMES_DIR, "postgres/recipe.json"));
  const entrypoint = await readFile(join(RUNTIMES_DIR, "postgres/entrypoint.sh"));
  const recipe = JSON.parse(raw.toString("utf8")) as PostgresRecipeFile;
  const hash = createHash("sha256").update(raw).update(entrypoint).update(String(POSTGRES_BUILD_REVISION)).digest("hex").slice(0, 32);
  return { ...recipe, hash, entrypoint };
}

async function buildPostgres(docker: Dockerode, image: string, options: RuntimeImageOptions): Promise<void> {
  const recipe = await postgresRecipe();
  const log = options.onLog ?? (() => {});
  if (process.getuid?.() !== 0) {
    throw new ForgeError(ErrorCode.BuildFailed, 400, `building ${image} needs root (debootstrap and chroot)`, {
      hint: "run `forge images build postgres` as root once, or set FORGE_POSTGRES_IMAGE to an image you have (e.g. postgres:15 from a registry)",
    });
  }
  for (const tool of ["debootstrap", "chroot", "tar"]) {
    if (!toolPath(tool)) {
      throw new ForgeError(ErrorCode.BuildFailed, 400, `building ${image} needs ${tool}, which is not installed`, {
        hint: "apt-get install -y debootstrap (or set FORGE_POSTGRES_IMAGE to an image you have)",
      });
    }
  }
  const cacheDir = options.cacheDir ?? (await defaultCacheDir());
  await mkdir(cacheDir, { recursive: true });
  const mirror = options.mirror ?? recipe.mirror;
  const rootfsTar = join(cacheDir, `debootstrap-${recipe.suite}-${recipe.variant}.tar`);

  // 1. The Debian base, downloaded once and cached as a tarball.
  if (!existsSync(rootfsTar)) {
    const fresh = await mkdtemp(join(cacheDir, "debootstrap-"));
    try {
      await chmod(fresh, 0o755); // it becomes "/": mkdtemp's 0700 would lock every other user out
      log(`debootstrap --variant=${recipe.variant} ${recipe.suite} from ${mirror} (cached in ${rootfsTar} for next time)`);
      await run(["debootstrap", `--variant=${recipe.variant}`, recipe.suite, fresh, mirror], log, image);
      await run(["tar", "--numeric-owner", "-C", fresh, "-cf", `${rootfsTar}.part`, "."], log, image);
      await rename(`${rootfsTar}.part`, rootfsTar);
    } finally {
      await rm(fresh, { recursive: true, force: true });
      await rm(`${rootfsTar}.part`, { force: true });
    }
  } else {
    log(`using the cached Debian base ${rootfsTar}`);
  }

  // 2. A working copy with postgres installed in a chroot.
  const root = await mkdtemp(join(cacheDir, "postgres-"));
  try {
    await run(["tar", "--numeric-owner", "-C", root, "-xpf", rootfsTar], log, image);
    // "/" of the image: mkdtemp's 0700 would keep the postgres user out of everything.
    await chmod(root, 0o755);
    // No cluster from the package (the entrypoint makes one per container), no daemons started.
    await mkdir(join(root, "etc/postgresql-common"), { recursive: true });
    await writeFile(join(root, "etc/postgresql-common/createcluster.conf"), "create_main_cluster = false\n");
    await writeFile(join(root, "usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n", { mode: 0o755 });
    await writeFile(join(root, "etc/resolv.conf"), await readFile("/etc/resolv.conf").catch(() => Buffer.from("")));
    const chrootEnv = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LANG=C.UTF-8"];
    await run(["chroot", root, ...chrootEnv, "apt-get", "update", "-q"], log, image);
    await run(["chroot", root, ...chrootEnv, "apt-get", "install", "-y", "-q", "--no-install-recommends", ...recipe.packages], log, image);
    await run(["chroot", root, ...chrootEnv, "apt-get", "clean"], log, image);
    // What a server never reads: package lists, docs, man pages (~100 MB of the image).
    for (const path of ["var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"]) {
      await rm(join(root, path), { recursive: true, force: true });
    }
    await mkdir(join(root, "var/lib/apt/lists/partial"), { recursive: true });
    await rm(join(root, "usr/sbin/policy-rc.d"), { force: true });
    await writeFile(join(root, "etc/resolv.conf"), "");
    await writeFile(join(root, "usr/local/bin/docker-entrypoint.sh"), recipe.entrypoint, { mode: 0o755 });
    await chmod(join(root, "usr/local/bin/docker-entrypoint.sh"), 0o755);
    // The data dir belongs to postgres, so a container (or a named volume copied from it) can initdb.
    const { uid, gid } = await postgresIds(root);
    await mkdir(join(root, "var/lib/postgresql/data"), { recursive: true, mode: 0o700 });
    await chown(join(root, "var/lib/postgresql/data"), uid, gid);
    await chown(join(root, "var/lib/postgresql"), uid, gid);

    // 3. Import with the recipe's metadata.
    log(`docker import -> ${image}`);
    const tarProc = Bun.spawn(["tar", "--numeric-owner", "-C", root, "-c", "."], { stdout: "pipe", stderr: "pipe" });
    const changes = [...recipe.changes, `LABEL ${IMAGE_LABELS.recipe}=${recipe.hash} dev.forge.runtime=postgres`];
    const [repo, tag] = splitTag(image);
    const stream = await docker.importImage(Readable.fromWeb(tarProc.stdout as import("node:stream/web").ReadableStream<Uint8Array>) as unknown as NodeJS.ReadableStream, {
      repo,
      tag,
      changes,
    } as Record<string, unknown>);
    let output = "";
    for await (const chunk of stream as AsyncIterable<Buffer>) output += chunk.toString("utf8");
    const tarCode = await tarProc.exited;
    const failed = /"error"\s*:\s*"([^"]*)"/.exec(output)?.[1];
    if (tarCode !== 0 || failed) {
      throw new ForgeError(ErrorCode.BuildFailed, 500, `importing ${image} failed: ${failed ?? `tar exited with ${tarCode}`}`, {
        hint: "see the log above; `forge images build postgres --force` retries",
      });
    }
    log(`imported ${image}`);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

/** A system tool, also where root's tools live when PATH lacks the sbin folders. */
function toolPath(name: string): string | undefined {
  return Bun.which(name) ?? [`/usr/sbin/${name}`, `/sbin/${name}`].find((p) => existsSync(p));
}

async function defaultCacheDir(): Promise<string> {
  const system = "/var/cache/forge";
  try {
    await mkdir(system, { recursive: true });
    await access(system, constants.W_OK);
    return system;
  } catch {
    return join(homedir(), ".cache", "forge");
  }
}

async function postgresIds(root: string): Promise<{ uid: number; gid: number }> {
  const passwd = await readFile(join(root, "etc/passwd"), "utf8");
  const line = passwd.split("\n").find((l) => l.startsWith("postgres:"));
  const [, , uid, gid] = line?.split(":") ?? [];
  if (!uid || !gid) {
    throw new ForgeError(ErrorCode.BuildFailed, 500, "the postgres package created no postgres user", { hint: "see the apt-get output above" });
  }
  return { uid: Number(uid), gid: Number(gid) };
}

function splitTag(image: string): [string, string] {
  const colon = image.lastIndexOf(":");
  if (colon > image.lastIndexOf("/")) return [image.slice(0, colon), image.slice(colon + 1)];
  return [image, "latest"];
}

/** Runs a build step, its output going to `log`; a failure carries the last lines. */
async function run(argv: string[], log: (line: string) => void, image: string): Promise<void> {
  const [tool = "", ...rest] = argv;
  const proc = Bun.spawn([toolPath(tool) ?? tool, ...rest], { stdout: "pipe", stderr: "pipe" });
  const tail: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>): Promise<void> => {
    let pending = "";
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      pending += decoder.decode(chunk, { stream: true });
      const lines = pending.split(/\r?\n/);
      pending = lines.pop() ?? "";
      for (const line of lines) {
        if (!line.trim()) continue;
        tail.push(line);
        if (tail.length > 20) tail.shift();
        log(line);
      }
    }
    if (pending.trim()) {
      tail.push(pending);
      log(pending);
    }
  };
  const [code] = await Promise.all([proc.exited, pump(proc.stdout), pump(proc.stderr)]);
  if (code !== 0) {
    throw new ForgeError(ErrorCode.BuildFailed, 500, `building ${image}: \`${argv.slice(0, 3).join(" ")} ...\` exited with ${code}\n${tail.join("\n")}`, {
      hint: "see the log above; is the Debian mirror reachable? `forge images build postgres --force` retries",
    });
  }
}
