/**
 * Image builds over dockerode: a build context is a tar made in memory (tar-stream) and fed
 * to `buildImage`; the engine's JSON progress is turned into log lines. A function's image
 * is `forge/fn-<name>:v<N>`: the runtime image plus the bundle (bun), or the function
 * folder's own Dockerfile (runtime "docker"). A failed build is a BuildFailed (400) carrying
 * the tail of the build log.
 */
import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import type { ConsolaInstance } from "consola";
import { createConsola } from "consola";
import type Dockerode from "dockerode";
import tar from "tar-stream";
import type { Header } from "tar-stream";
import { ErrorCode, ForgeError } from "../errors.ts";
// the one constant of the pool's contract that builds need (driver.ts imports nothing: no cycle)
import { BUNDLE_FILE } from "./artifact.ts";
import type { ShimRuntime } from "../pool/driver.ts";

/** Where a bun function's folder sits inside its version image, as Lambda's LAMBDA_TASK_ROOT. */
export const IMAGE_TASK_ROOT = "/var/task";

/** Where a bun function's bundle sits inside its image (the driver points FORGE_BUNDLE here). */
export const IMAGE_BUNDLE_PATH = `${IMAGE_TASK_ROOT}/${BUNDLE_FILE}`;

/** Image labels forge sets and reads (DESIGN §7). */
export const IMAGE_LABELS = {
  managed: "dev.forge.managed",
  function: "dev.forge.function",
  version: "dev.forge.version",
  /** Path of the bundle inside a bun function's image. */
  bundle: "dev.forge.bundle",
  /** Path of the function's folder inside a bun function's image (the bundle's folder). */
  dir: "dev.forge.dir",
  /** Hash of the recipe a runtime image was built from: a changed recipe means a rebuild. */
  recipe: "dev.forge.recipe",
} as const;

/** The image of one version of a function. */
export function functionImageName(fn: string, version: number): string {
  return `forge/fn-${fn}:v${version}`;
}

/** One entry of an in-memory build context. */
export type ContextEntry =
  | { path: string; type: "directory"; mode?: number }
  | { path: string; type?: "file"; data: Uint8Array | string; mode?: number }
  /** A file streamed from disk (the 100 MB bun binary is not read into memory). */
  | { path: string; type: "disk"; from: string; size: number; mode?: number };

/** A tar of `entries`, in order, as a Node stream for dockerode. Owners are root, times fixed. */
export function contextTar(entries: ContextEntry[]): Readable {
  const pack = tar.pack();
  void (async () => {
    try {
      for (const entry of entries) {
        const base = { name: entry.path, uid: 0, gid: 0, mtime: new Date(0) };
        if (entry.type === "directory") {
          await addEntry(pack, { ...base, type: "directory", mode: entry.mode ?? 0o755 });
        } else if (entry.type === "disk") {
          await writeFromDisk(pack, { ...base, type: "file", mode: entry.mode ?? 0o755, size: entry.size }, entry.from);
        } else {
          const data = typeof entry.data === "string" ? Buffer.from(entry.data) : Buffer.from(entry.data);
          await addEntry(pack, { ...base, type: "file", mode: entry.mode ?? 0o644, size: data.byteLength }, data);
        }
      }
      pack.finalize();
    } catch (err) {
      pack.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  })();
  // tar-stream packs are streamx streams; Readable.from gives dockerode the Node stream it pipes.
  return Readable.from(pack as AsyncIterable<Buffer>);
}

/**
 * The build context of a folder: its regular files and folders, modes kept, owners root;
 * files named in `replace` get the given content instead.
 * The folder is one forge unpacked itself (safeUnpack), so it holds no links; any found
 * are skipped rather than followed.
 */
export async function folderContext(dir: string, replace: Record<string, string> = {}): Promise<Readable> {
  return contextTar(await folderEntries(dir, "", replace));
}

/** The entries of `dir` below `prefix` (e.g. "task/"), as folderContext reads them. */
async function folderEntries(dir: string, prefix: string, replace: Record<string, string> = {}): Promise<ContextEntry[]> {
  const entries: ContextEntry[] = [];
  async function walk(rel: string): Promise<void> {
    const names = (await readdir(join(dir, rel))).sort();
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const info = await lstat(join(dir, path));
      if (info.isDirectory()) {
        entries.push({ path: prefix + path, type: "directory", mode: info.mode & 0o7777 });
        await walk(path);
      } else if (info.isFile() && replace[path] !== undefined) {
        entries.push({ path: prefix + path, data: replace[path], mode: info.mode & 0o7777 });
      } else if (info.isFile()) {
        entries.push({ path: prefix + path, type: "disk", from: join(dir, path), size: info.size, mode: info.mode & 0o7777 });
      }
    }
  }
  await walk("");
  return entries;
}

export interface BuildOptions {
  /** Tag of the result, e.g. forge/fn-greet:v3. */
  tag: string;
  labels?: Record<string, string>;
  buildargs?: Record<string, string>;
  /** Every line of build output, as it comes. */
  onLog?: (line: string) => void;
  /** Lines of the log kept for the error of a failed build. Default 30. */
  tailLines?: number;
  /** What is being built, for messages ("the image of greet v3"). */
  what?: string;
  /** Status of the error when the build fails: 400 (the user's Dockerfile) or 500 (forge's recipe). Default 400. */
  failStatus?: number;
  /** Hint of the error when the build fails. */
  failHint?: string;
}

/**
 * Builds `context` (a tar stream holding a Dockerfile at its root) into `options.tag`.
 * Resolves with the image id; throws BuildFailed with the tail of the log.
 */
export async function buildImage(docker: Dockerode, context: Readable, options: BuildOptions): Promise<string> {
  const what = options.what ?? options.tag;
  const tail: string[] = [];
  const keep = options.tailLines ?? 30;
  const log = (line: string): void => {
    tail.push(line);
    if (tail.length > keep) tail.shift();
    options.onLog?.(line);
  };
  const fail = (message: string, cause?: unknown): ForgeError =>
    new ForgeError(ErrorCode.BuildFailed, options.failStatus ?? 400, `building ${what} failed: ${message}${tail.length ? `\n${tail.join("\n")}` : ""}`, {
      hint: options.failHint ?? "fix the Dockerfile (the last lines of the build log are above) and deploy again",
      cause,
    });

  let stream: NodeJS.ReadableStream;
  try {
    stream = await docker.buildImage(context as NodeJS.ReadableStream, {
      t: options.tag,
      labels: options.labels ?? {},
      buildargs: options.buildargs ?? {},
      // Nothing can be pulled here, and FROM lines name local images: never try a registry.
      pull: false,
      rm: true,
      forcerm: true,
    });
  } catch (err) {
    throw fail(err instanceof Error ? err.message : String(err), err);
  }

  let imageId: string | undefined;
  let error: string | undefined;
  let pending = "";
  const handle = (raw: string): void => {
    if (!raw.trim()) return;
    let event: { stream?: string; status?: string; error?: string; aux?: { ID?: string } };
    try {
      event = JSON.parse(raw) as typeof event;
    } catch {
      log(raw);
      return;
    }
    if (event.error) {
      error = event.error.trim();
      log(error);
    }
    if (event.aux?.ID) imageId = event.aux.ID;
    const text = event.stream ?? event.status;
    if (text) for (const line of text.split("\n")) if (line.trim()) log(line.trimEnd());
  };
  try {
    for await (const chunk of stream as AsyncIterable<Buffer | string>) {
      pending += typeof chunk === "string" ? chunk : chunk.toString("utf8");
      let newline: number;
      while ((newline = pending.indexOf("\n")) !== -1) {
        handle(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
      }
    }
    handle(pending);
  } catch (err) {
    throw fail(err instanceof Error ? err.message : String(err), err);
  }
  if (error !== undefined) throw fail(firstLine(error));
  if (!imageId) {
    // Engines before API 1.30 send no aux ID: ask for the tag instead.
    imageId = await docker
      .getImage(options.tag)
      .inspect()
      .then((info) => info.Id)
      .catch(() => undefined);
    if (!imageId) throw fail("the engine reported no image");
  }
  return imageId;
}

export interface ImageBuilderOptions {
  docker: Dockerode;
  /** The image bun functions are built FROM (and that Dockerfiles may name as FORGE_RUNTIME_IMAGE). */
  runtimeImage: string;
  /** The image node functions are built FROM (forge/runtime-node:<node version>). */
  nodeImage?: string;
  /** Default: a silent consola. */
  logger?: ConsolaInstance;
}

/** What FunctionService asks of image builds (its ImageBuilder interface, implemented over Docker). */
export interface FunctionImageBuilder {
  /** `artifactDir`: the version's folder, the bundle at its root as BUNDLE_FILE; FROM the runtime's image (default bun). */
  buildBundleImage(fn: string, version: number, artifactDir: string, onLog: (line: string) => void, runtime?: ShimRuntime): Promise<string>;
  buildDockerfileImage(fn: string, version: number, contextDir: string, onLog: (line: string) => void): Promise<string>;
  removeImages(fn: string): Promise<void>;
  /** Removes the image of one version (a version that failed to load keeps no image). */
  removeImage(fn: string, version: number): Promise<void>;
  /** Is the image on this engine? (Several nodes: each builds a version's image on its own.) */
  hasImage(tag: string): Promise<boolean>;
}

/**
 * Builds functions' images. A Dockerfile of a runtime "docker" function gets the build arg
 * FORGE_RUNTIME_IMAGE (the runtime image's full name, which carries the Bun version) to use
 * in its FROM line, since nothing can be pulled.
 */
export function createImageBuilder(options: ImageBuilderOptions): FunctionImageBuilder {
  const { docker, runtimeImage } = options;
  const logger = (options.logger ?? createConsola({ level: -999 })).withTag("images");
  const labelsOf = (fn: string, version: number): Record<string, string> => ({
    [IMAGE_LABELS.managed]: "true",
    [IMAGE_LABELS.function]: fn,
    [IMAGE_LABELS.version]: String(version),
  });

  return {
    async buildBundleImage(fn, version, artifactDir, onLog, runtime = "bun") {
      const tag = functionImageName(fn, version);
      const base = runtime === "node" ? options.nodeImage : runtimeImage;
      if (base === undefined) {
        throw new ForgeError(ErrorCode.DriverUnavailable, 503, "this forge has no node runtime image to build a node function's image from", {
          hint: "install Node.js on the forge host (or set FORGE_NODE_BIN) and restart forge; `forge images build node` builds the image",
        });
      }
      const dockerfile = [
        `FROM ${base}`,
        // the folder as Lambda's task root: the function's files, the bundle at its root
        `COPY task/ ${IMAGE_TASK_ROOT}/`,
        // Lets `docker run` of the image serve the function without forge telling it where.
        `ENV FORGE_BUNDLE=${IMAGE_BUNDLE_PATH} FORGE_FUNCTION_DIR=${IMAGE_TASK_ROOT} LAMBDA_TASK_ROOT=${IMAGE_TASK_ROOT}`,
      ].join("\n") + labelLine({ ...labelsOf(fn, version), [IMAGE_LABELS.bundle]: IMAGE_BUNDLE_PATH, [IMAGE_LABELS.dir]: IMAGE_TASK_ROOT });
      const context = contextTar([
        { path: "Dockerfile", data: dockerfile },
        { path: "task", type: "directory", mode: 0o755 },
        ...(await folderEntries(artifactDir, "task/")),
      ]);
      const started = performance.now();
      await buildImage(docker, context, {
        tag,
        onLog,
        what: `the image of ${fn} v${version}`,
        failStatus: 500,
        failHint: `is the runtime image ${base} present? build it with \`forge images build ${runtime}\``,
      });
      logger.debug(`built ${tag} in ${Math.round(performance.now() - started)} ms`);
      return tag;
    },

    async buildDockerfileImage(fn, version, contextDir, onLog) {
      const tag = functionImageName(fn, version);
      const started = performance.now();
      // forge's labels as one last instruction of the user's Dockerfile (one step, not one per label).
      const dockerfile = (await Bun.file(join(contextDir, "Dockerfile")).text()) + labelLine(labelsOf(fn, version));
      await buildImage(docker, await folderContext(contextDir, { Dockerfile: dockerfile }), {
        tag,
        buildargs: { FORGE_RUNTIME_IMAGE: runtimeImage },
        onLog,
        what: `the image of ${fn} v${version}`,
        failHint:
          "fix the Dockerfile (the last lines of the build log are above) and deploy again; nothing can be pulled, " +
          "so start FROM ${FORGE_RUNTIME_IMAGE} (declare `ARG FORGE_RUNTIME_IMAGE` before FROM) or another local image",
      });
      logger.debug(`built ${tag} in ${Math.round(performance.now() - started)} ms`);
      return tag;
    },

    hasImage: (tag) =>
      docker
        .getImage(tag)
        .inspect()
        .then(() => true)
        .catch(() => false),

    async removeImages(fn) {
      const images = await docker.listImages({
        filters: { label: [`${IMAGE_LABELS.managed}=true`, `${IMAGE_LABELS.function}=${fn}`] },
      });
      const prefix = `forge/fn-${fn}:`;
      for (const image of images) {
        const tags = (image.RepoTags ?? []).filter((tag) => tag.startsWith(prefix));
        if (tags.length === 0) continue;
        for (const tag of tags) {
          // force: a container of the function may still be stopping; the tag goes now.
          // noprune: the untagged parents are build cache that a concurrent build of another
          // function may be using this very moment (same bundle, same COPY layer); removing
          // them failed that build with "failed to get digest".
          await docker
            .getImage(tag)
            .remove({ force: true, noprune: true })
            .catch((err: unknown) => logger.warn(`could not remove ${tag}:`, err));
        }
        if (tags.length === (image.RepoTags ?? []).length) void reap(image.Id);
      }
    },
    async removeImage(fn, version) {
      const tag = functionImageName(fn, version);
      // As in removeImages: force, and the parents kept for builds that share them.
      await docker
        .getImage(tag)
        .remove({ force: true, noprune: true })
        .catch((err: unknown) => {
          if ((err as { statusCode?: number }).statusCode !== 404) logger.warn(`could not remove ${tag}:`, err);
        });
    },
  };

  /**
   * An untagged image still used by a container that is being stopped stays behind as
   * <none>: remove it once that container is gone (a few tries, backing off; the delete
   * that asked does not wait).
   */
  async function reap(id: string): Promise<void> {
    for (let attempt = 0, delay = 100; attempt < 8; attempt++, delay *= 2) {
      const status = await docker
        .getImage(id)
        .remove({ noprune: true })
        .then(() => 200)
        .catch((err: unknown) => (err as { statusCode?: number }).statusCode ?? 500);
      if (status !== 409) return;
      await new Promise((resolve) => setTimeout(resolve, delay).unref?.());
    }
    logger.debug(`image ${id} is still in use; left for \`docker image prune\``);
  }
}

// --- internal ---

type HeaderArgument = Partial<Header> & Pick<Header, "name">;

function addEntry(pack: tar.Pack, header: HeaderArgument, data?: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error | null): void => (err ? reject(err) : resolve());
    if (data) pack.entry(header, data, done);
    else pack.entry(header, done);
  });
}

/** Streams a file into the tar chunk by chunk, honouring backpressure. */
async function writeFromDisk(pack: tar.Pack, header: HeaderArgument, from: string): Promise<void> {
  let sink!: ReturnType<tar.Pack["entry"]>;
  const packed = new Promise<void>((resolve, reject) => {
    sink = pack.entry(header, (err?: Error | null) => (err ? reject(err) : resolve()));
  });
  for await (const chunk of Bun.file(from).stream()) {
    if (!sink.write(chunk)) await new Promise<void>((resolve) => sink.once("drain", () => resolve()));
  }
  sink.end(null); // streamx types want an argument; null writes nothing
  await packed;
}

/**
 * One LABEL instruction for the end of a Dockerfile: the classic builder turns each label
 * passed as a build option into a step of its own (a container each, ~0.3 s apiece).
 */
export function labelLine(labels: Record<string, string>): string {
  const pairs = Object.entries(labels).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return pairs.length ? `\nLABEL ${pairs.join(" ")}\n` : "";
}

function firstLine(text: string): string {
  const line = text.split("\n")[0] ?? text;
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}
