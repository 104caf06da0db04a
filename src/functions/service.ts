/**
 * FunctionService: the deploy pipeline and the lifecycle of functions (rollback, patch,
 * delete), over the store, the build steps and the pool. The router calls it; it knows
 * nothing of HTTP.
 */
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import type { ConsolaInstance } from "consola";
import {
  bundleEntry,
  digestFolder,
  findEntry,
  nativePackages,
  packArtifact,
  packageClosure,
  parseConfigInput,
  PATCHABLE_FIELDS,
  resolveConfig,
  safeUnpack,
  sealArtifact,
  splitHandler,
  unpackArtifact,
  type FunctionConfig,
  type FunctionConfigInput,
} from "../build/index.ts";
import { assertName, ErrorCode, ForgeError, guardRepo, isForgeError } from "../errors.ts";
import { BUNDLE_FILE, type Activation, type PoolManager, type PoolSpec } from "../pool/index.ts";
import type { AsyncStore, FunctionRecord, InvocationQuery, InvocationRecord, SharedRepo, VersionRecord } from "../store/index.ts";

export interface DeployProgress {
  step: number;
  of: number;
  phase: "packaging" | "building" | "starting";
  message: string;
}

export interface DeployResult {
  name: string;
  version: number;
  url: string;
  image: string | null;
  digest: string;
  /** How the module is called: "lambda" handlers get one event at a time unless concurrency was set. */
  kind: "fetch" | "lambda" | null;
  concurrency: number;
}

/** Builds an image for a version (docker driver); absent on the process driver. */
export interface ImageBuilder {
  /** Image of a bun or node function: that runtime's image plus the version's folder (the bundle at its root). */
  buildBundleImage(fn: string, version: number, artifactDir: string, onLog: (line: string) => void, runtime?: "bun" | "node"): Promise<string>;
  /** Removes the image of one version. */
  removeImage(fn: string, version: number): Promise<void>;
  /** Image of a runtime "docker" function from its own Dockerfile. */
  buildDockerfileImage(fn: string, version: number, contextDir: string, onLog: (line: string) => void): Promise<string>;
  removeImages(fn: string): Promise<void>;
  /** Is the image on this node's engine? */
  hasImage(tag: string): Promise<boolean>;
}

/**
 * Resolves database bindings into environment variables (provisioner); absent when none.
 * `containers`: the instances run in containers (docker driver), which reach a database only
 * on that database's own network, so the answer names the networks to join and addresses on them.
 */
export type BindingResolver = (databases: string[], options: { containers: boolean }) => Promise<{ env: Record<string, string>; networks: string[] }>;

export interface FunctionServiceOptions {
  store: AsyncStore;
  pool: PoolManager;
  logger: ConsolaInstance;
  dataDir: string;
  /** Public URL of a function. */
  urlOf: (name: string) => string;
  limits: { maxBytes: number; maxFiles: number };
  images?: ImageBuilder;
  bindings?: BindingResolver;
  /**
   * The networks that give a function outbound access (docker: forge's egress network, or
   * none when FORGE_EGRESS_NETWORK=none), joined by its instances unless forge.json says
   * "network": "none"; its databases' networks come after. Absent: the driver has no network
   * isolation to give (process: instances share the host's network), so "none" cannot hold.
   */
  egressNetworks?: string[];
  /**
   * Several nodes (DESIGN §9): artifacts go to the shared store by digest, and each change is
   * announced so every node converges on it. Absent: one node.
   */
  cluster?: {
    shared: SharedRepo;
    /** Tells every node to look at `name` again (resolves once sent; a lost one is caught by the reconcile). */
    announce(name: string): Promise<void>;
  };
}

/** What this node's pool runs of a function: the version and the config it was started with. */
interface Applied {
  version: number;
  config: FunctionConfig;
  /** configKey(config): equal for equal configs whatever their key order (jsonb reorders keys). */
  key: string;
}

export class FunctionService {
  private readonly changing = new Map<string, Promise<unknown>>();
  private readonly applied = new Map<string, Applied>();
  private readonly shared: SharedRepo | undefined;
  /** The repositories, their failures turned into 503 store_unavailable (a bug here stays a 500). */
  private readonly store: Pick<AsyncStore, "functions" | "versions" | "invocations" | "schedules">;

  constructor(private readonly o: FunctionServiceOptions) {
    this.shared = o.cluster ? guardRepo(o.cluster.shared) : undefined;
    this.store = {
      functions: guardRepo(o.store.functions),
      versions: guardRepo(o.store.versions),
      invocations: guardRepo(o.store.invocations),
      schedules: guardRepo(o.store.schedules),
    };
  }

  async get(name: string): Promise<FunctionRecord> {
    const fn = await this.store.functions.get(name);
    if (!fn || fn.activeVersion === null) {
      throw new ForgeError(ErrorCode.FunctionNotFound, 404, `function ${name} not found`, {
        hint: "list functions with `forge list`, or deploy it with `forge deploy`",
      });
    }
    return fn;
  }

  async list(): Promise<FunctionRecord[]> {
    return (await this.store.functions.list()).filter((f) => f.activeVersion !== null);
  }

  /** Versions, newest first; also of a function whose every deploy failed (it has no active version). */
  async versions(name: string): Promise<VersionRecord[]> {
    if (!(await this.store.functions.get(name))) await this.get(name);
    return this.store.versions.list(name);
  }

  /** Invocation records of a function, newest first. */
  async invocations(name: string, query: InvocationQuery = {}): Promise<InvocationRecord[]> {
    return this.store.invocations.list(name, query);
  }

  /** Deploys a tar.gz of a function folder (or of a bundle and its forge.json) as the next version. */
  async deploy(name: string, archive: Uint8Array, onProgress: (p: DeployProgress) => void = () => {}, overrides: unknown = {}): Promise<DeployResult> {
    assertName(name);
    const flags = parseConfigInput(overrides, "deploy flags");
    return this.serially(name, () => this.deployNow(name, archive, onProgress, flags));
  }

  /** Switches to another version (default: the one before the active one). */
  rollback(name: string, to?: number): Promise<VersionRecord> {
    return this.serially(name, () => this.rollbackNow(name, to));
  }

  /**
   * Changes of one function run one at a time, in the order they came (deploy, rollback,
   * PATCH, delete): each verifies and switches a version, and two interleaved would leave
   * the store and the pool disagreeing on which one serves.
   */
  private async serially<T>(name: string, job: () => Promise<T>): Promise<T> {
    const previous = this.changing.get(name) ?? Promise.resolve();
    const run = previous.catch(() => {}).then(job);
    this.changing.set(name, run);
    try {
      return await run;
    } finally {
      if (this.changing.get(name) === run) this.changing.delete(name);
    }
  }

  private async rollbackNow(name: string, to?: number): Promise<VersionRecord> {
    const fn = await this.get(name);
    const versions = await this.store.versions.list(name);
    // By default the newest earlier version that loaded; --to may name a failed one (it is verified again).
    const target = to ?? versions.find((v) => fn.activeVersion !== null && v.version < fn.activeVersion && v.status !== "failed")?.version;
    if (target === undefined) {
      throw new ForgeError(ErrorCode.VersionNotFound, 409, `${name} has no version before v${fn.activeVersion} to roll back to`, {
        hint: "see `forge versions " + name + "`; pass --to N to pick one",
      });
    }
    const version = await this.store.versions.get(name, target);
    if (!version) {
      throw new ForgeError(ErrorCode.VersionNotFound, 404, `${name} has no version ${target}`, {
        hint: `known versions: ${versions.map((v) => v.version).join(", ")}`,
      });
    }
    await this.ensureArtifact(version);
    const image = await this.localImage(version);
    await this.activateVerified(name, target, await this.poolSpec({ ...version, image }, version.config));
    this.switched(name);
    if (image !== version.image) await this.store.versions.setImage(name, target, image);
    if (version.status !== "ready") await this.store.versions.settle(name, target, { status: "ready" });
    const active = await this.store.versions.activate(name, target);
    this.noteApplied(name, active.version, active.config);
    await this.announce(name);
    return active;
  }

  /** Changes config; env and memory need new instances (a zero-downtime switch), the rest applies live. */
  patch(name: string, body: unknown): Promise<FunctionRecord> {
    return this.serially(name, () => this.patchNow(name, body));
  }

  private async patchNow(name: string, body: unknown): Promise<FunctionRecord> {
    const fn = await this.get(name);
    const input = parseConfigInput(body, "PATCH body");
    for (const key of Object.keys(input)) {
      if (!(PATCHABLE_FIELDS as readonly string[]).includes(key)) {
        throw new ForgeError(ErrorCode.InvalidConfig, 400, `"${key}" cannot be changed with PATCH`, {
          hint: `PATCH changes ${PATCHABLE_FIELDS.join(", ")}; deploy a new version for the rest`,
        });
      }
    }
    const next: FunctionConfig = resolveConfig(name, fn.config, input);
    if (input.env) next.env = input.env; // PATCH env replaces the whole map, so a variable can be removed
    const needsNewInstances = input.env !== undefined || (input.memoryMb !== undefined && input.memoryMb !== fn.config.memoryMb);
    const version = fn.activeVersion === null ? undefined : await this.store.versions.get(name, fn.activeVersion);
    if (needsNewInstances && version) {
      // Verified like a deploy: new instances with the new env must load before they serve;
      // if they do not, the config stays as it was and the running instances go on.
      // This node may not have converged on the active version yet (a PATCH right after a
      // deploy on another node): its artifact and image first, as a converge would.
      await this.ensureArtifact(version);
      const image = await this.localImage(version);
      try {
        await this.o.pool.activate(await this.poolSpec({ ...version, image }, next));
        this.switched(name);
      } catch (err) {
        throw new ForgeError(ErrorCode.LoadFailed, 400, `${name} v${version.version} did not start with the new settings, so nothing changed: ${err instanceof Error ? err.message : String(err)}`, {
          hint: "fix the setting (or the code that reads it) and PATCH again",
          cause: err,
        });
      }
    }
    const mine = this.applied.get(name);
    const updated = await this.store.functions.updateConfig(name, next);
    if (needsNewInstances && version) {
      this.noteApplied(name, version.version, updated.config);
    } else {
      this.o.pool.updateLive(name, liveFields(next));
      // Only a pool that ran what the store said before now runs what it says after; one
      // behind (a deploy elsewhere not converged on yet) is left to the converge.
      if (version && mine && mine.version === version.version && mine.key === configKey(fn.config)) this.noteApplied(name, version.version, updated.config);
    }
    await this.announce(name);
    return updated;
  }

  delete(name: string): Promise<void> {
    return this.serially(name, () => this.deleteNow(name));
  }

  private async deleteNow(name: string): Promise<void> {
    if (!(await this.store.functions.get(name))) await this.get(name); // one whose deploys all failed can be deleted too
    await this.store.schedules.deleteForFunction(name);
    await this.store.functions.delete(name);
    await this.removeHere(name);
    await this.announce(name);
  }

  /** Stops what this node runs of a deleted function and forgets it (its images, files, logs, series). */
  private async removeHere(name: string): Promise<void> {
    this.applied.delete(name);
    await this.o.pool.remove(name);
    await this.o.images?.removeImages(name).catch((err: unknown) => this.o.logger.warn(`could not remove images of ${name}:`, err));
    rmSync(this.functionDir(name), { recursive: true, force: true });
    for (const hook of this.deleteHooks) hook(name);
  }

  private readonly deleteHooks: ((name: string) => void)[] = [];

  /** Runs `hook` after a function is deleted (logs, metrics, schedules forget it). */
  onDelete(hook: (name: string) => void): void {
    this.deleteHooks.push(hook);
  }

  /** Re-creates the pools of active versions after a restart (no instance starts unless minWarm asks). */
  async restore(): Promise<void> {
    // Versions being verified when forge stopped never finished: they did not load here. With
    // several nodes another node may be verifying one right now: only those long past any start go.
    const stuckBefore = this.o.cluster ? Date.now() - 15 * 60_000 : Number.POSITIVE_INFINITY;
    for (const fn of await this.store.functions.list()) {
      for (const v of await this.store.versions.list(fn.name)) {
        if (v.status === "starting" && v.createdAt < stuckBefore) await this.store.versions.settle(fn.name, v.version, { status: "failed", error: "forge stopped while it was verifying this version; deploy it again" });
      }
    }
    for (const fn of await this.list()) {
      try {
        await this.serially(fn.name, () => this.convergeNow(fn.name));
      } catch (err) {
        this.o.logger.error(`could not restore ${fn.name} v${fn.activeVersion}:`, err);
      }
    }
  }

  /**
   * Brings this node's pool of a function to what the store says another node did (several
   * nodes): a new active version is fetched (its artifact by digest, its image built on this
   * engine) and switched to with no failed request (as many of it warmed as the old one had
   * ready: a function this node serves no traffic for gets none, and its first request takes
   * a stem cell); a PATCH applies live or by a switch as it did there; a deleted function goes.
   */
  converge(name: string): Promise<void> {
    return this.serially(name, () => this.convergeNow(name));
  }

  /** Every function worth a converge: the store's and those this node runs. */
  async names(): Promise<string[]> {
    const names = new Set((await this.store.functions.list()).map((f) => f.name));
    for (const name of this.applied.keys()) names.add(name);
    return [...names];
  }

  private async convergeNow(name: string): Promise<void> {
    const fn = await this.store.functions.get(name);
    const mine = this.applied.get(name);
    if (!fn) {
      if (mine || this.o.pool.pool(name)) await this.removeHere(name);
      return;
    }
    if (fn.activeVersion === null) return; // its first deploy is under way on some node
    const key = configKey(fn.config);
    if (mine && mine.version === fn.activeVersion && mine.key === key) return;
    const version = await this.store.versions.get(name, fn.activeVersion);
    if (!version) return;
    if (mine && mine.version === version.version && !restartsInstances(mine.config, fn.config)) {
      this.o.pool.updateLive(name, liveFields(fn.config));
    } else {
      await this.ensureArtifact(version);
      const image = await this.localImage(version);
      await this.o.pool.activate(await this.poolSpec({ ...version, image }, fn.config), { verify: false });
    }
    this.noteApplied(name, version.version, fn.config);
  }

  /**
   * The pool now runs what the store does not say yet: until the store takes it (noteApplied),
   * what this node runs is unknown, so a converge after a failed write puts the store's back.
   */
  private switched(name: string): void {
    this.applied.delete(name);
  }

  private noteApplied(name: string, version: number, config: FunctionConfig): void {
    this.applied.set(name, { version, config, key: configKey(config) });
  }

  /** Tells the other nodes (several nodes); a failure is logged: their reconcile catches up. */
  private async announce(name: string): Promise<void> {
    await this.o.cluster?.announce(name).catch((err: unknown) => this.o.logger.warn(`could not announce the change of ${name} to the other nodes (they catch up within FORGE_RECONCILE):`, err));
  }

  /** The version's folder on this node: fetched by digest from the shared store when missing (several nodes). */
  private async ensureArtifact(version: VersionRecord): Promise<void> {
    const dir = resolve(this.o.dataDir, version.artifact);
    // The path comes from the shared store: it must name this function's own folder.
    if (!dir.startsWith(resolve(this.functionDir(version.function)) + "/")) {
      throw new ForgeError(ErrorCode.Internal, 500, `${version.function} v${version.version} names an artifact outside its folder: ${version.artifact}`, { hint: "the metadata database holds a bad artifact path; deploy the function again" });
    }
    if (existsSync(dir)) return;
    const shared = this.shared;
    const archive = shared ? await shared.getArtifact(version.digest) : undefined;
    if (!archive) {
      throw new ForgeError(ErrorCode.ServiceUnavailable, 503, `the artifact of ${version.function} v${version.version} (${version.digest.slice(0, 12)}) is not on this node${shared ? " nor in the shared store" : ""}`, {
        hint: "deploy the function again",
      });
    }
    mkdirSync(dirname(dir), { recursive: true });
    await unpackArtifact(archive, dir, this.o.limits);
  }

  /** The version's image on this node's engine: the recorded one when it is there, else built now (null without docker). */
  private async localImage(version: VersionRecord): Promise<string | null> {
    if (!this.o.images) return null;
    if (version.image && (await this.o.images.hasImage(version.image))) return version.image;
    return this.rebuildImage(version);
  }

  // --- internal ---

  private async deployNow(name: string, archive: Uint8Array, onProgress: (p: DeployProgress) => void, flags: FunctionConfigInput): Promise<DeployResult> {
    const fnDir = this.functionDir(name);
    const work = join(fnDir, "tmp", randomBytes(6).toString("hex"));
    const src = join(work, "src");
    mkdirSync(src, { recursive: true, mode: 0o700 });
    try {
      onProgress({ step: 1, of: 3, phase: "packaging", message: `unpacking ${archive.byteLength} bytes` });
      const unpacked = await safeUnpack(archive, src, this.o.limits);
      const { config, fromFile } = await this.readConfig(name, src, flags);

      onProgress({ step: 2, of: 3, phase: "building", message: `${unpacked.files} files, runtime ${config.runtime}` });
      let artifact: string;
      let digest: string;
      let artifactDir: string | undefined;
      if (config.runtime !== "docker") {
        // The version's folder: the upload, the bundle at its root. The CLI uploads its own
        // (trusted, in-process) bundle as BUNDLE_FILE; raw source is bundled here, untrusted.
        const bundleFile = join(src, BUNDLE_FILE);
        const external = await nativePackages(src);
        if (!existsSync(bundleFile)) {
          // forge.json as written: a defaulted entry must not hide package.json main or handler
          const entry = await findEntry(src, { ...(fromFile.entry ? { entry: fromFile.entry } : {}), ...(fromFile.handler ? { handler: fromFile.handler } : {}) });
          // built beside the folder (the untrusted build's working folder must not lie in it), then moved in
          await bundleEntry(src, entry, join(work, BUNDLE_FILE), { external, target: config.runtime });
          renameSync(join(work, BUNDLE_FILE), bundleFile);
        }
        await sealArtifact(src, await packageClosure(src, external));
        digest = await digestFolder(src);
        const artifactsDir = join(fnDir, "artifacts");
        mkdirSync(artifactsDir, { recursive: true });
        artifactDir = join(artifactsDir, digest.slice(0, 32));
        if (!existsSync(artifactDir)) renameSync(src, artifactDir);
        artifact = relative(this.o.dataDir, artifactDir);
      } else {
        if (!this.o.images) {
          throw new ForgeError(ErrorCode.InvalidConfig, 400, `runtime "docker" needs the docker driver, and forge runs the process driver`, {
            hint: "start forge with FORGE_DRIVER=docker on a machine with Docker, or deploy a bun function",
          });
        }
        if (!existsSync(join(src, "Dockerfile"))) {
          throw new ForgeError(ErrorCode.InvalidConfig, 400, `runtime "docker" needs a Dockerfile in the function folder`, {
            hint: "add a Dockerfile whose image serves HTTP on $PORT",
          });
        }
        // Named by its digest, as bundles are: the same path on every node that fetches it.
        digest = await digestDir(src);
        const contextDir = join(fnDir, "contexts", digest.slice(0, 32));
        mkdirSync(join(fnDir, "contexts"), { recursive: true });
        if (!existsSync(contextDir)) renameSync(src, contextDir);
        artifact = relative(this.o.dataDir, contextDir);
      }
      // Several nodes: stored once by digest before any node can learn of the version.
      if (this.shared && !(await this.shared.hasArtifact(digest))) {
        await this.shared.putArtifact(digest, await packArtifact(resolve(this.o.dataDir, artifact)));
      }

      const version = await this.store.versions.create(name, { digest, config, artifact, image: null });
      let image: string | null = null;
      try {
        if (this.o.images) {
          const log = (line: string): void => onProgress({ step: 2, of: 3, phase: "building", message: line });
          image =
            config.runtime !== "docker" && artifactDir
              ? await this.o.images.buildBundleImage(name, version.version, artifactDir, log, config.runtime)
              : await this.o.images.buildDockerfileImage(name, version.version, resolve(this.o.dataDir, artifact), log);
        }
      } catch (err) {
        // Nothing ran: the number stays used, the version goes.
        await this.store.versions.discard(name, version.version);
        throw err;
      }
      if (image) await this.store.versions.setImage(name, version.version, image);
      onProgress({ step: 3, of: 3, phase: "starting", message: `version ${version.version}` });
      const spec = await this.poolSpec({ ...version, image }, config);
      // A Lambda handler gets one event at a time, unless forge.json or a flag says otherwise.
      const concurrencySet = fromFile.concurrency !== undefined || flags.concurrency !== undefined;
      const running = await this.activateVerified(name, version.version, concurrencySet ? spec : { ...spec, lambdaConcurrency: 1 }, true);
      this.switched(name);
      // The concurrency it runs with is the version's (and, once active, the function's).
      await this.store.versions.settle(name, version.version, { status: "ready", config: { ...config, concurrency: running.concurrency } });
      const active = await this.store.versions.activate(name, version.version);
      this.noteApplied(name, active.version, active.config);
      await this.announce(name);
      return { name, version: version.version, url: this.o.urlOf(name), image, digest, kind: running.kind, concurrency: running.concurrency };
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  }

  /** The config of a deploy, and forge.json's own fields (what it sets, not the defaults). */
  private async readConfig(name: string, src: string, flags: FunctionConfigInput): Promise<{ config: FunctionConfig; fromFile: FunctionConfigInput }> {
    const file = Bun.file(join(src, "forge.json"));
    let fromFile: FunctionConfigInput = {};
    if (await file.exists()) {
      let raw: unknown;
      try {
        raw = JSON.parse(await file.text());
      } catch (err) {
        throw new ForgeError(ErrorCode.InvalidConfig, 400, `forge.json is not valid JSON: ${(err as Error).message}`, {
          hint: "fix the syntax of forge.json (a JSON object, no comments or trailing commas)",
        });
      }
      fromFile = parseConfigInput(raw, "forge.json");
    }
    const config = resolveConfig(name, fromFile, flags);
    await this.store.functions.ensure(name, config);
    return { config, fromFile };
  }

  /** The image of a version that has none (it failed once and lost it), on the docker driver. */
  private async rebuildImage(version: VersionRecord): Promise<string | null> {
    if (!this.o.images) return null;
    const dir = resolve(this.o.dataDir, version.artifact);
    if (version.config.runtime === "docker") return this.o.images.buildDockerfileImage(version.function, version.version, dir, () => {});
    // A single-file artifact is a version from before whole-folder artifacts: it ran without an image.
    return statSync(dir).isDirectory() ? this.o.images.buildBundleImage(version.function, version.version, dir, () => {}, version.config.runtime) : null;
  }

  /**
   * Activates a version once one of its instances loaded it. When none does, the version is
   * kept as failed (with why, for `forge versions`), the active one goes on serving, and the
   * error says both.
   */
  private async activateVerified(name: string, version: number, spec: PoolSpec, fresh = false): Promise<Activation> {
    try {
      return await this.o.pool.activate(spec);
    } catch (err) {
      if (!(isForgeError(err) && err.code === ErrorCode.LoadFailed)) {
        // Never tried (no memory for an instance, forge stopping): a new version goes, as after a failed build.
        if (fresh) await this.store.versions.discard(name, version);
        throw err;
      }
      const why = err instanceof Error ? err.message : String(err);
      await this.store.versions.settle(name, version, { status: "failed", error: why.slice(0, 8_000) });
      // A failed version keeps no image (deploy after deploy would pile them up); a rollback to it builds it again.
      if (spec.image && this.o.images) {
        await this.o.images.removeImage(name, version);
        await this.store.versions.setImage(name, version, null);
      }
      const active = (await this.store.functions.get(name))?.activeVersion ?? null;
      throw new ForgeError(ErrorCode.LoadFailed, isForgeError(err) && err.status < 500 ? err.status : 400, `${name} v${version} was not activated: ${why}`, {
        hint:
          active !== null && active !== version
            ? `v${active} is still active and serving; fix the error and deploy again (\`forge versions ${name}\` shows v${version} as failed)`
            : `${name} has no active version; fix the error and deploy again`,
        cause: err,
      });
    }
  }

  private async poolSpec(version: VersionRecord, config: FunctionConfig): Promise<PoolSpec> {
    const bound = config.databases.length > 0 && this.o.bindings ? await this.o.bindings(config.databases, { containers: this.o.images !== undefined }) : { env: {}, networks: [] };
    if (config.databases.length > 0 && !this.o.bindings) {
      throw new ForgeError(ErrorCode.InvalidConfig, 400, `${config.name} binds databases, and this forge has no provisioner`, {
        hint: "remove `databases` from forge.json or run forge with the provisioner",
      });
    }
    // Egress first (a container's first network is its primary one), then the databases'; each once.
    const egress = config.network === "none" ? [] : (this.o.egressNetworks ?? []);
    const networks = [...new Set([...egress, ...bound.networks])];
    if (config.network === "none" && !this.o.egressNetworks) {
      this.o.logger.warn(`${config.name}: "network": "none" is not enforced on this driver (its instances share the host's network); the docker driver enforces it`);
    }
    const artifactPath = resolve(this.o.dataDir, version.artifact);
    return {
      function: version.function,
      version: version.version,
      runtime: config.runtime,
      concurrency: config.concurrency,
      minWarm: config.minWarm,
      maxInstances: config.maxInstances,
      memoryMb: config.memoryMb,
      timeoutMs: config.timeoutMs,
      ...(config.handler ? { handler: splitHandler(config.handler).exportName } : {}),
      env: { ...config.env, ...bound.env },
      ...(networks.length > 0 ? { networks } : {}),
      // a folder (the bundle at its root), or the single .mjs of a version deployed before folders shipped
      ...(config.runtime !== "docker" ? (artifactPath.endsWith(".mjs") ? { bundlePath: artifactPath } : { bundlePath: join(artifactPath, BUNDLE_FILE), artifactDir: artifactPath }) : {}),
      ...(version.image ? { image: version.image } : {}),
    };
  }

  private functionDir(name: string): string {
    return join(this.o.dataDir, "functions", name);
  }
}

// --- internal ---

async function digestDir(dir: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  const glob = new Bun.Glob("**/*");
  const files = [...glob.scanSync({ cwd: dir, dot: true, onlyFiles: true })].sort();
  for (const f of files) {
    hasher.update(f);
    hasher.update(new Uint8Array(await Bun.file(join(dir, f)).arrayBuffer()));
  }
  return hasher.digest("hex");
}

/** A config's identity for comparing what runs with what the store says (keys sorted: jsonb reorders them). */
function configKey(config: FunctionConfig): string {
  const sorted = (v: unknown): unknown =>
    v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, x]) => [k, sorted(x)])) : Array.isArray(v) ? v.map(sorted) : v;
  return JSON.stringify(sorted(config));
}

/** Does going from one config to the other need new instances (env, memory), as PATCH decides? */
function restartsInstances(before: FunctionConfig, after: FunctionConfig): boolean {
  return before.memoryMb !== after.memoryMb || configKey({ env: before.env } as FunctionConfig) !== configKey({ env: after.env } as FunctionConfig);
}

/** The fields PATCH applies to running instances. */
function liveFields(config: FunctionConfig): { concurrency: number; minWarm: number; maxInstances: number; timeoutMs: number } {
  return { concurrency: config.concurrency, minWarm: config.minWarm, maxInstances: config.maxInstances, timeoutMs: config.timeoutMs };
}
