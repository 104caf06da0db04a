/**
 * The docker driver: every instance is a hardened container whose shim listens on a Unix
 * socket in a bind-mounted per-instance host folder (<dataDir>/instances/<id>, mounted at
 * /run/forge). forge reaches it the way it reaches a process: a Unix socket, never an
 * address (measured by src/bench/docker-socket-vs-port.ts: a warm request takes a median
 * ~73 us over the socket vs ~165 us through a port published on 127.0.0.1, whose traffic
 * crosses docker-proxy; and a socket needs no network in the container at all).
 *
 * Each container runs as uid 1000 with every capability dropped, no-new-privileges, a
 * read-only root filesystem with a small tmpfs on /tmp, and limits on memory (no swap), pids
 * and CPU shares. It sees its own folder and nothing else of the host: not forge's data dir,
 * not another function's code.
 *
 * Networks: a container joins exactly the networks its spec names (InstanceSpec.networks),
 * cells as instances; none named means NetworkMode none. Functions get forge's egress
 * network (options.egressNetwork, _egress-network.ts: outbound access, no traffic between
 * containers, the host closed by _host-firewall.ts) unless forge.json says "network": "none",
 * plus the internal network of each bound database.
 *
 * - Stem cells run the runtime image generic; the pool specializes them over the socket.
 * - A bun function's instance runs its version image `forge/fn-<name>:v<N>`, the function's
 *   folder inside it at /var/task (labels dev.forge.dir, dev.forge.bundle); without such an
 *   image the folder is copied (hard links) into the instance folder, at /run/forge/fn, as
 *   placeArtifact does for a stem cell about to be specialized.
 * - A runtime "docker" instance runs the user's image, which serves HTTP on $PORT over TCP.
 *   Nothing outside reaches that port (no network, or the egress bridge, where containers
 *   cannot reach each other and nothing is published), so a second container (the socket
 *   bridge, runtimes/bun/bridge.ts) joins its network namespace and serves the Unix socket.
 *   Chosen over a port published on 127.0.0.1 because it publishes nothing (no address to
 *   scan, and it works under NetworkMode none), keeps one kind of endpoint for the pool and
 *   needs nothing from the user's image; the price is a second, small container per instance.
 *
 * Exits come from one Docker events subscription filtered by forge's labels (no polling);
 * an OOM kill is reported as reason "oom". Logs are read from each container's multiplexed
 * log stream and demultiplexed. On start, `reconcile` adopts what an earlier run left
 * (see there); `dispose` stops every container this driver started or adopted.
 */
import { randomUUID } from "node:crypto";
import { chmod, chown, copyFile, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createConsola, type ConsolaInstance } from "consola";
import type Dockerode from "dockerode";
import { ErrorCode, ForgeError } from "../errors.ts";
import { ARTIFACT_COPY, copyArtifact } from "./_artifact-copy.ts";
import { DockerEvents, type ContainerEvent } from "./_docker-events.ts";
import { demux, logLines } from "./_docker-logs.ts";
import { containerName, functionContainerName, LABEL, ownerOf, specHash, type ContainerRole } from "./_docker-names.ts";
import { ensureEgressNetwork } from "./_egress-network.ts";
import { guardHost, type HostGuard } from "./_host-firewall.ts";
import { heapExhausted, InstanceLog, startFailureTail } from "./_log-parse.ts";
import { boundedAll, cgroupWorkingSet, DOCKER_CGROUP_LAYOUTS, findDockerLayout, type DockerCgroupLayout } from "./_memory-usage.ts";
import { nodeHeapFlag, shimSettings } from "./_shim-env.ts";
import { BUNDLE_FILE, type Driver, type ExitInfo, type InstanceHandle, type InstanceRuntime, type InstanceSpec, type ListedInstance, type LogLine, type LogOptions } from "./driver.ts";
import { health, waitReady } from "./instance-client.ts";

export interface DockerDriverOptions {
  docker: Dockerode;
  /** Instance folders live under `<dataDir>/instances/`. */
  dataDir: string;
  /** Image of stem cells, of bun instances without a version image, and of socket bridges. */
  runtimeImage: string;
  /** Image of node cells and of node instances without a version image (forge/runtime-node:<version>). */
  nodeImage?: string;
  /** Where the driver reports. Default: a silent consola. */
  logger?: ConsolaInstance;
  /** How long a container may take to answer its first health check, ms. Default 30 000. */
  startTimeoutMs?: number;
  /** Seconds between SIGTERM and SIGKILL on stop. Default 2. */
  stopGraceSec?: number;
  /** Log lines kept per instance for logs(). Default 1 000. */
  logLines?: number;
  /** Size of the tmpfs on /tmp, MiB (counted in the container's memory). Default 64. */
  tmpfsMb?: number;
  /** Most processes and threads in a container. Default 256. */
  pidsLimit?: number;
  /**
   * forge's egress network (_egress-network.ts), created by prepareEgress() or by the first
   * start() whose spec names it. Default: none (containers join only what their spec names,
   * and no spec should name an egress network).
   */
  egressNetwork?: string;
  /** Memory of a runtime "docker" instance's socket bridge, MiB. Default 64. */
  bridgeMemoryMb?: number;
  /** Port a runtime "docker" image serves on ($PORT). Default 8080. */
  dockerRuntimePort?: number;
  /**
   * Where memoryUsage looks for containers' memory cgroups, tried in order; none readable:
   * it asks the engine for each container's stats. Default DOCKER_CGROUP_LAYOUTS (tests pass []).
   */
  cgroupLayouts?: readonly DockerCgroupLayout[];
}

/** An active function version: what a container of an earlier run may be adopted for. */
export interface ActiveVersion {
  function: string;
  version: number;
}

/** What prepareEgress() found or made: the egress network, and whether the host is closed to it. */
export interface EgressStatus {
  network: string;
  /** Its bridge device on the engine's host. */
  bridge: string;
  /** True when this forge created the network (else another forge, or an earlier run, had). */
  created: boolean;
  /** The host firewall (_host-firewall.ts): installed, or why not and the rules to add by hand. */
  host: HostGuard;
}

export interface ReconcileReport {
  /** Healthy instances of active versions, kept for the pool to claim. */
  adopted: number;
  /** Containers removed: exited, stem cells, other versions, unhealthy (and, from dropUnclaimed, unclaimed). */
  removed: number;
}

export interface DockerDriver extends Driver {
  readonly name: "docker";
  /** The owner label value of this driver's containers (a hash of the data dir). */
  readonly owner: string;
  /**
   * Looks at the containers an earlier run of forge (same data dir) left: instances of an
   * active version that answer their health check are kept, and a start() of an equal spec
   * (same function, version, image, env, memory) takes one instead of creating a container;
   * everything else of this owner is removed, and stale instance folders too. Containers
   * without dev.forge.managed=true, or of another owner, are never touched.
   */
  reconcile(active: ActiveVersion[]): Promise<ReconcileReport>;
  /**
   * Removes the kept containers no start() claimed (call once the pools are restored: what
   * they did not want at start would only idle), and reports the adoption as a whole.
   */
  dropUnclaimed(): Promise<ReconcileReport>;
  /** Changes a running instance's memory limit (and CPU shares, which follow memory). */
  setMemory(id: string, memoryMb: number): Promise<void>;
  memoryUsage(): Promise<Map<string, number>>;
  /** The containers of an instance (its own, and a bridge's), for tests and benches. */
  containersOf(id: string): string[];
  /** The egress network's name (options.egressNetwork), if this driver has one. */
  readonly egressNetwork: string | undefined;
  /**
   * Creates the egress network when missing and closes the host to it (once: later calls
   * share the answer). start() does it for the first spec naming the network; forge calls it
   * at start to say whether the host could be closed. Undefined without an egress network.
   */
  prepareEgress(): Promise<EgressStatus | undefined>;
}

/** Unix socket paths are limited to 108 bytes (sun_path); stay below, as the process driver does. */
const MAX_SOCKET_PATH = 100;
/** The instance folder inside every container. */
const MOUNT = "/run/forge";
const SOCKET = "s.sock";
/** Every instance runs as this user (the runtime image's /etc/passwd names it forge). */
const INSTANCE_USER = "1000:1000";
const INSTANCE_UID = 1000;
const SHIM_CMD = ["/usr/local/bin/bun", "--no-install", "--no-env-file", "/forge/shim.ts"];
/** The node runtime image's shim (runtimes/js/shim.ts bundled for Node), with V8's heap sized as on the process driver. */
function nodeShimCommand(spec: InstanceSpec): string[] {
  return ["/usr/local/bin/node", "--disable-warning=ExperimentalWarning", nodeHeapFlag(spec), "/forge/shim.mjs"];
}
const BRIDGE_CMD = ["/usr/local/bin/bun", "--no-install", "--no-env-file", "--smol", "/forge/bridge.ts"];
const MB = 1024 * 1024;

interface DockerInstance {
  handle: InstanceHandle;
  dir: string;
  /** Main container first, then the bridge if any. */
  containers: string[];
  log: InstanceLog;
  /** Answered its first health check (or was adopted): exits are reported from then on. */
  ready: boolean;
  running: boolean;
  oom: boolean;
  stopping: Promise<void> | undefined;
  exited: Promise<void>;
  markExited: () => void;
}

interface Adoptable {
  containers: string[];
  dir: string;
  token: string;
  spec: string;
  runtime: InstanceRuntime;
  fn: string;
  version: number;
}

export function createDockerDriver(options: DockerDriverOptions): DockerDriver {
  const opts = {
    logger: createConsola({ level: -999 }),
    startTimeoutMs: 30_000,
    stopGraceSec: 2,
    logLines: 1_000,
    tmpfsMb: 64,
    pidsLimit: 256,
    bridgeMemoryMb: 64,
    dockerRuntimePort: 8080,
    cgroupLayouts: DOCKER_CGROUP_LAYOUTS,
    ...options,
  };
  const { docker } = opts;
  const dataDir = resolve(opts.dataDir);
  const owner = ownerOf(dataDir);
  const logger = opts.logger.withTag("docker-driver");
  const instances = new Map<string, DockerInstance>();
  const byContainer = new Map<string, DockerInstance>();
  const adoptables = new Map<string, Adoptable[]>();
  const adoptableContainers = new Map<string, Adoptable>();
  const exitListeners = new Set<(info: ExitInfo) => void>();
  const logListeners = new Set<(line: LogLine) => void>();
  const imageBundles = new Map<string, Promise<ImageFolder | undefined>>();
  const adoption = { kept: 0, claimed: 0, removed: 0 };
  let disposed = false;
  let egress: Promise<EgressStatus> | undefined;

  const events = new DockerEvents({
    docker,
    labels: [`${LABEL.managed}=true`, `${LABEL.owner}=${owner}`],
    actions: ["die", "oom"],
    logger,
    onEvent: (event) => onEvent(event),
  });

  // --- events ---

  function onEvent(event: ContainerEvent): void {
    const adoptable = adoptableContainers.get(event.containerId);
    if (adoptable && event.action === "die") {
      dropAdoptable(adoptable, "it exited");
      return;
    }
    const instance = byContainer.get(event.containerId);
    if (!instance) return;
    if (event.action === "oom") {
      instance.oom = true;
      return;
    }
    if (event.action !== "die" || !instance.running) return;
    instance.running = false;
    instance.markExited();
    if (instance.stopping || !instance.ready) return;
    const code = Number(event.attributes.exitCode);
    void reportExit(instance, event.containerId, Number.isFinite(code) ? code : null);
  }

  async function reportExit(instance: DockerInstance, containerId: string, code: number | null): Promise<void> {
    let oom = instance.oom;
    if (!oom && code === 137) {
      // The oom event may trail the die event: the container's state says for sure.
      oom = await docker
        .getContainer(containerId)
        .inspect()
        .then((info) => info.State?.OOMKilled === true)
        .catch(() => false);
    }
    if (!oom) oom = heapExhausted(instance.log);
    const info: ExitInfo = { id: instance.handle.id, code, reason: oom ? "oom" : code === 137 || code === 143 ? "killed" : "exited" };
    logger.debug(`instance ${info.id} ended on its own`, info);
    for (const listener of exitListeners) {
      try {
        listener(info);
      } catch (err) {
        logger.warn("an exit listener threw", err);
      }
    }
  }

  function emitLog(line: LogLine): void {
    for (const listener of logListeners) {
      try {
        listener(line);
      } catch (err) {
        logger.warn("a log listener threw", err);
      }
    }
  }

  // --- networks ---

  function prepareEgress(): Promise<EgressStatus | undefined> {
    const name = opts.egressNetwork;
    if (name === undefined) return Promise.resolve(undefined);
    if (egress) return egress;
    const making = (async (): Promise<EgressStatus> => {
      const network = await ensureEgressNetwork(docker, name);
      return { network: network.name, bridge: network.bridge, created: network.created, host: await guardHost(network.bridge) };
    })();
    // A failure is not kept: the next call tries again.
    making.catch(() => {
      if (egress === making) egress = undefined;
    });
    egress = making;
    return making;
  }

  /** A container's first network is given at create; none named: no network at all. */
  function networkMode(spec: InstanceSpec): string {
    return spec.networks?.[0] ?? "none";
  }

  /** The others are joined before start, so the runtime starts with every network it will have. */
  async function joinOtherNetworks(containerId: string, spec: InstanceSpec): Promise<void> {
    for (const network of spec.networks?.slice(1) ?? []) await docker.getNetwork(network).connect({ Container: containerId });
  }

  // --- start ---

  async function start(spec: InstanceSpec, signal?: AbortSignal): Promise<InstanceHandle> {
    if (disposed) throw new ForgeError(ErrorCode.Disposed, 503, "the docker driver was disposed");
    if (instances.has(spec.id)) throw new ForgeError(ErrorCode.Conflict, 409, `an instance with id ${spec.id} already exists`);
    if (spec.runtime === "docker" && !spec.image) {
      throw new ForgeError(ErrorCode.InstanceStartFailed, 500, `runtime "docker" instance ${spec.id} has no image`, {
        hint: "the function's version has no image; deploy it again with the docker driver",
      });
    }
    signal?.throwIfAborted();
    await events.subscribe();
    if (opts.egressNetwork !== undefined && spec.networks?.includes(opts.egressNetwork)) await prepareEgress();
    if (spec.runtime === "node" && !spec.image && !opts.nodeImage) {
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, "this forge has no node runtime image to run runtime \"node\" with", {
        hint: "install Node.js on the forge host (or set FORGE_NODE_BIN) and restart forge; `forge images build node` builds the image",
      });
    }
    const image = spec.image ?? (spec.runtime === "node" ? (opts.nodeImage as string) : opts.runtimeImage);
    const claimed = spec.role === "instance" ? await claimAdoptable(spec, image) : undefined;
    if (claimed) return claimed;

    // 1. The instance folder, writable by the container's user (the shim creates its socket there).
    const dir = await instanceDir(spec.id);
    const controlToken = randomUUID();
    const instance: DockerInstance = newInstance(
      { id: spec.id, spec, endpoint: { socketPath: join(dir, SOCKET) }, controlToken, startedAt: Date.now() },
      dir,
    );
    instances.set(spec.id, instance);

    try {
      // 2. Create and start the container(s).
      const labels = {
        [LABEL.managed]: "true",
        [LABEL.owner]: owner,
        [LABEL.role]: spec.role,
        [LABEL.instance]: spec.id,
        [LABEL.runtime]: spec.runtime,
        [LABEL.dir]: dir,
        [LABEL.token]: controlToken,
        [LABEL.spec]: specHash(spec, image),
        ...(spec.function !== undefined ? { [LABEL.function]: spec.function } : {}),
        ...(spec.version !== undefined ? { [LABEL.version]: String(spec.version) } : {}),
      };
      if (spec.runtime !== "docker") {
        const env: Record<string, string> = {
          TZ: "UTC", // as Lambda and Workers run; the function's env may set its own
          ...spec.env,
          FORGE_SOCKET: `${MOUNT}/${SOCKET}`,
          FORGE_CONTROL_TOKEN: controlToken,
          FORGE_INSTANCE_ID: spec.id,
          FORGE_WORK_DIR: "/tmp",
          ...shimSettings(spec),
        };
        if (spec.role === "instance" && (spec.artifactDir || spec.bundlePath)) {
          const inImage = await bundleInImage(image);
          if (inImage) {
            env.FORGE_BUNDLE = inImage.bundle;
            if (inImage.dir) env.FORGE_FUNCTION_DIR = inImage.dir;
          } else if (spec.artifactDir) {
            // no version image: the instance folder gets the copy, as a cell does
            const placed = await placeIn(instance, spec.artifactDir);
            env.FORGE_BUNDLE = placed.bundle;
            env.FORGE_FUNCTION_DIR = placed.dir;
          } else if (spec.bundlePath) {
            await copyFile(spec.bundlePath, join(dir, "fn.mjs"));
            await chmod(join(dir, "fn.mjs"), 0o644);
            env.FORGE_BUNDLE = `${MOUNT}/fn.mjs`;
          }
        } else {
          // A cell starts generic even from an image that carries a bundle.
          env.FORGE_BUNDLE = "";
        }
        const id = await createContainer(instance, "instance", {
          name: containerName(spec, "instance"),
          Image: image,
          Cmd: spec.runtime === "node" ? nodeShimCommand(spec) : SHIM_CMD,
          Env: toEnv(env),
          ...(env.FORGE_FUNCTION_DIR ? { WorkingDir: env.FORGE_FUNCTION_DIR } : {}),
          Labels: labels,
          HostConfig: hostConfig(spec.memoryMb, { Binds: [`${dir}:${MOUNT}`], NetworkMode: networkMode(spec) }),
        });
        await joinOtherNetworks(id, spec);
        await docker.getContainer(id).start();
        follow(instance, id);
      } else {
        const port = String(opts.dockerRuntimePort);
        const main = await createContainer(instance, "instance", {
          name: containerName(spec, "instance"),
          Image: image,
          Env: toEnv({ ...spec.env, PORT: port }),
          Labels: labels,
          HostConfig: hostConfig(spec.memoryMb, { NetworkMode: networkMode(spec) }),
        });
        await joinOtherNetworks(main, spec);
        await docker.getContainer(main).start();
        follow(instance, main);
        const bridge = await createContainer(instance, "bridge", {
          name: containerName(spec, "bridge"),
          Image: opts.runtimeImage,
          Cmd: BRIDGE_CMD,
          Env: toEnv({
            FORGE_SOCKET: `${MOUNT}/${SOCKET}`,
            FORGE_CONTROL_TOKEN: controlToken,
            FORGE_UPSTREAM_PORT: port,
            ...(spec.function !== undefined ? { FORGE_FUNCTION: spec.function } : {}),
            ...(spec.version !== undefined ? { FORGE_VERSION: String(spec.version) } : {}),
          }),
          Labels: { ...labels, [LABEL.role]: "bridge" },
          // The instance's namespace: the bridge reaches the function's port on loopback.
          HostConfig: hostConfig(opts.bridgeMemoryMb, { Binds: [`${dir}:${MOUNT}`], NetworkMode: `container:${main}` }),
        });
        await docker.getContainer(bridge).start();
      }

      // 3. Wait until the shim (or bridge) answers, racing the container's exit.
      await waitReady(instance.handle, controlToken, { timeoutMs: opts.startTimeoutMs, signal, exited: instance.exited });
    } catch (err) {
      await Promise.race([instance.exited, new Promise((r) => setTimeout(r, 300))]);
      const tail = startFailureTail(instance.log);
      await stop(spec.id);
      // The egress network may have been removed by hand meanwhile: the next start makes sure again.
      if (opts.egressNetwork !== undefined && spec.networks?.includes(opts.egressNetwork)) egress = undefined;
      if (err instanceof ForgeError) {
        throw new ForgeError(err.code, err.status, tail ? `${err.message}: ${tail}` : err.message, { hint: err.hint, cause: err.cause });
      }
      if (signal?.aborted) throw err;
      throw new ForgeError(ErrorCode.InstanceStartFailed, 502, `could not start a container for ${spec.function ?? "a stem cell"}: ${messageOf(err)}`, {
        hint: `is the image ${image} present? \`forge images build bun\` builds the runtime image`,
        cause: err,
      });
    }
    instance.ready = true;
    logger.debug(`instance ${spec.id} ready in ${Date.now() - instance.handle.startedAt} ms`);
    return instance.handle;
  }

  function newInstance(handle: InstanceHandle, dir: string): DockerInstance {
    let markExited!: () => void;
    const exited = new Promise<void>((r) => (markExited = r));
    return {
      handle,
      dir,
      containers: [],
      log: new InstanceLog(opts.logLines),
      ready: false,
      running: true,
      oom: false,
      stopping: undefined,
      exited,
      markExited,
    };
  }

  async function createContainer(instance: DockerInstance, role: ContainerRole, config: Dockerode.ContainerCreateOptions): Promise<string> {
    const container = await docker.createContainer({ ...config, User: INSTANCE_USER, WorkingDir: config.WorkingDir ?? "/tmp" });
    instance.containers.push(container.id);
    byContainer.set(container.id, instance);
    logger.debug(`created ${role} container ${config.name ?? container.id}`);
    return container.id;
  }

  function hostConfig(memoryMb: number, extra: Dockerode.HostConfig): Dockerode.HostConfig {
    return {
      ...extra,
      ReadonlyRootfs: true,
      // noexec: nothing in /tmp is ever executed (modules are imported, which reads them).
      Tmpfs: { "/tmp": `rw,nosuid,nodev,noexec,size=${opts.tmpfsMb}m` },
      CapDrop: ["ALL"],
      SecurityOpt: ["no-new-privileges"],
      Memory: memoryMb * MB,
      // Equal to Memory: no swap, so a function over its limit is killed, not slowed down.
      MemorySwap: memoryMb * MB,
      PidsLimit: opts.pidsLimit,
      CpuShares: cpuShares(memoryMb),
      LogConfig: { Type: "json-file", Config: { "max-size": "5m", "max-file": "2" } },
      RestartPolicy: { Name: "no" },
    };
  }

  /** Reads a container's log stream into its InstanceLog until the container ends. */
  function follow(instance: DockerInstance, containerId: string, sinceSec?: number): void {
    void (async () => {
      try {
        const stream = (await docker.getContainer(containerId).logs({
          follow: true,
          stdout: true,
          stderr: true,
          timestamps: true,
          ...(sinceSec !== undefined ? { since: sinceSec } : {}),
        })) as unknown as AsyncIterable<Uint8Array>;
        for await (const line of logLines(demux(stream), instance.handle.id, true)) {
          instance.log.push(line);
          emitLog(line);
        }
      } catch (err) {
        logger.debug(`reading the logs of ${instance.handle.id} stopped`, err);
      } finally {
        instance.log.end();
      }
    })();
  }

  async function instanceDir(id: string): Promise<string> {
    let dir = join(dataDir, "instances", id);
    if (Buffer.byteLength(join(dir, SOCKET)) <= MAX_SOCKET_PATH) {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } else {
      // A deep data dir would push the socket past sun_path: a short private folder instead.
      dir = await mkdtemp(join(tmpdir(), `forge-${id.slice(0, 12)}-`));
    }
    try {
      // Owned by the container's user, private to it (root, forge's usual user, passes anyway).
      await chown(dir, INSTANCE_UID, INSTANCE_UID);
      await chmod(dir, 0o700);
    } catch {
      // forge is not root: the container's user must still be able to create the socket.
      await chmod(dir, 0o777);
    }
    return dir;
  }

  /**
   * Where a version image carries its bundle (label dev.forge.bundle) and its folder
   * (dev.forge.dir, /var/task; absent in images built before folders shipped), if it does.
   */
  function bundleInImage(image: string): Promise<ImageFolder | undefined> {
    let found = imageBundles.get(image);
    if (!found) {
      found = docker
        .getImage(image)
        .inspect()
        .then((info) => {
          const labels = info.Config?.Labels ?? {};
          const bundle = labels["dev.forge.bundle"];
          return bundle ? { bundle, ...(labels["dev.forge.dir"] ? { dir: labels["dev.forge.dir"] } : {}) } : undefined;
        });
      imageBundles.set(image, found);
      found.catch(() => imageBundles.delete(image));
    }
    return found;
  }

  /** The version's folder into the instance's bind-mounted folder: the paths as the container sees them. */
  async function placeIn(instance: DockerInstance, artifactDir: string): Promise<{ dir: string; bundle: string }> {
    await copyArtifact(artifactDir, join(instance.dir, ARTIFACT_COPY));
    const dir = `${MOUNT}/${ARTIFACT_COPY}`;
    return { dir, bundle: `${dir}/${BUNDLE_FILE}` };
  }

  async function placeArtifact(id: string, artifactDir: string): Promise<{ dir: string; bundle: string }> {
    const instance = instances.get(id);
    if (!instance || instance.stopping || !instance.running) throw new ForgeError(ErrorCode.InstanceCrashed, 502, `instance ${id} is not running`);
    return placeIn(instance, artifactDir);
  }

  // --- stop, list, logs ---

  function stop(id: string): Promise<void> {
    const instance = instances.get(id);
    if (!instance) return Promise.resolve();
    instance.stopping ??= (async () => {
      // The bridge first: requests stop arriving before the function goes.
      for (const containerId of [...instance.containers].reverse()) {
        const container = docker.getContainer(containerId);
        await container.stop({ t: opts.stopGraceSec }).catch((err: unknown) => ignoreGone(err, 304));
        await container.remove({ force: true, v: true }).catch((err: unknown) => ignoreGone(err));
        byContainer.delete(containerId);
      }
      instance.running = false;
      instance.markExited();
      instance.log.end();
      await rm(instance.dir, { recursive: true, force: true });
      instances.delete(id);
    })();
    return instance.stopping;
  }

  function ignoreGone(err: unknown, also?: number): void {
    const status = (err as { statusCode?: number }).statusCode;
    if (status === 404 || status === also || status === 409) return;
    logger.warn("stopping a container failed", err);
  }

  async function list(): Promise<ListedInstance[]> {
    const containers = await docker.listContainers({
      all: true,
      filters: { label: [`${LABEL.managed}=true`, `${LABEL.owner}=${owner}`] },
    });
    const out: ListedInstance[] = [];
    for (const c of containers) {
      const labels = c.Labels ?? {};
      const role = labels[LABEL.role];
      if (role !== "instance" && role !== "cell") continue;
      const known = byContainer.get(c.Id);
      const id = known?.handle.id ?? labels[LABEL.instance] ?? c.Id.slice(0, 12);
      const fn = labels[LABEL.function];
      const version = labels[LABEL.version];
      out.push({
        id,
        role,
        ...(fn !== undefined ? { function: fn } : {}),
        ...(version !== undefined ? { version: Number(version) } : {}),
        // The die event can come before the engine's own state says so.
        running: c.State === "running" && known?.running !== false,
      });
    }
    return out;
  }

  // --- memory usage ---

  /** Where this host's engine keeps containers' memory cgroups: found once; null when forge cannot read them. */
  let cgroupLayout: DockerCgroupLayout | null | undefined;
  let layoutMisses = 0;

  /**
   * What each live instance uses: the working set of its containers' memory cgroups (a
   * runtime "docker" instance's bridge counted with it), read from the cgroup files. Only
   * when those cannot be read is the engine asked, in the background (see engineUsage).
   */
  async function memoryUsage(): Promise<Map<string, number>> {
    const live = [...instances.values()].filter((i) => i.running && !i.stopping && i.containers.length > 0);
    if (cgroupLayout === undefined && live[0]) {
      const found = await findDockerLayout(live[0].containers[0] as string, opts.cgroupLayouts);
      // A container that died meanwhile finds nothing either: given up after a few looks.
      if (found || ++layoutMisses >= LAYOUT_LOOKS) cgroupLayout = found ?? null;
      if (cgroupLayout === null) logger.info("containers' memory cgroups are not readable here: their memory comes from the engine's stats, a few seconds late");
    }
    const layout = cgroupLayout;
    const measured = layout
      ? await Promise.all(live.map((instance) => Promise.all(instance.containers.map((c) => cgroupWorkingSet(layout.dir(c), layout.version)))))
      : engineUsage(live);
    const usage = new Map<string, number>();
    live.forEach((instance, i) => {
      const sizes = measured[i] ?? [];
      if (!instance.running || instance.stopping || sizes.some((bytes) => bytes === undefined)) return;
      usage.set(instance.handle.id, sizes.reduce<number>((sum, bytes) => sum + (bytes ?? 0), 0));
    });
    return usage;
  }

  /** The engine's latest figure per container, and the round of stats calls under way. */
  const engineFigures = new Map<string, number>();
  let engineRound: Promise<void> | undefined;

  /**
   * From the engine's stats: what the last round found, at once, and a new round started when
   * none runs. Each one-shot stats call waits for the engine's next sample (~1 s per container
   * once it samples one), so a round over 50 containers, 8 at a time, takes ~7 s: never awaited
   * by the caller, which gets figures that old.
   */
  function engineUsage(live: DockerInstance[]): (number | undefined)[][] {
    const containers = live.flatMap((instance) => instance.containers);
    engineRound ??= (async () => {
      const sizes = await boundedAll(containers, STATS_CONCURRENCY, engineWorkingSet);
      const keep = new Set(byContainer.keys());
      engineFigures.clear();
      containers.forEach((c, i) => {
        const bytes = sizes[i];
        if (bytes !== undefined && keep.has(c)) engineFigures.set(c, bytes);
      });
    })().finally(() => {
      engineRound = undefined;
    });
    return live.map((instance) => instance.containers.map((c) => engineFigures.get(c)));
  }

  /** The engine's one-shot stats of a container: its working set (undefined when it is gone). */
  async function engineWorkingSet(containerId: string): Promise<number | undefined> {
    try {
      const stats = (await docker.getContainer(containerId).stats({ stream: false, "one-shot": true })) as unknown as EngineStats;
      const usage = stats.memory_stats?.usage;
      if (usage === undefined) return undefined;
      const inactive = stats.memory_stats?.stats?.total_inactive_file ?? stats.memory_stats?.stats?.inactive_file ?? 0;
      return Math.max(0, usage - inactive);
    } catch {
      return undefined;
    }
  }

  async function* logs(id: string, options?: LogOptions): AsyncIterable<LogLine> {
    const instance = instances.get(id);
    if (!instance) return;
    yield* instance.log.read(options);
  }

  async function setMemory(id: string, memoryMb: number): Promise<void> {
    const instance = instances.get(id);
    const main = instance?.containers[0];
    if (!main) return;
    // Memory and MemorySwap move together (the engine refuses Memory above MemorySwap).
    await docker.getContainer(main).update({ Memory: memoryMb * MB, MemorySwap: memoryMb * MB, CpuShares: cpuShares(memoryMb) });
  }

  /**
   * A specialized cell's container takes the function's name (its labels cannot change: they
   * still say cell, so a restarted forge removes it rather than adopting it, as before).
   */
  async function specialized(id: string, as: { function: string; version: number }): Promise<void> {
    const instance = instances.get(id);
    const main = instance?.containers[0];
    if (!instance || !main || instance.stopping || instance.handle.spec.role !== "cell") return;
    const name = functionContainerName(as.function, as.version, id);
    try {
      await docker.getContainer(main).rename({ name });
    } catch (err) {
      const status = (err as { statusCode?: number }).statusCode;
      // Gone (stopped and removed meanwhile) or the name taken: it keeps its cell name.
      if (status !== 404 && status !== 409) throw err;
      logger.debug(`container of ${id} not renamed to ${name}: ${messageOf(err)}`);
    }
  }

  // --- reconcile and adoption ---

  async function reconcile(active: ActiveVersion[]): Promise<ReconcileReport> {
    await events.subscribe();
    const wanted = new Set(active.map((a) => `${a.function}@${a.version}`));
    const containers = await docker.listContainers({
      all: true,
      filters: { label: [`${LABEL.managed}=true`, `${LABEL.owner}=${owner}`] },
    });
    // Group by instance: a runtime "docker" instance is two containers.
    const groups = new Map<string, Dockerode.ContainerInfo[]>();
    for (const c of containers) {
      if (byContainer.has(c.Id) || adoptableContainers.has(c.Id)) continue; // this run's
      const key = c.Labels?.[LABEL.instance] ?? c.Id;
      groups.set(key, [...(groups.get(key) ?? []), c]);
    }
    let adopted = 0;
    let removed = 0;
    const keepDirs = new Set<string>();
    await Promise.all(
      [...groups.values()].map(async (group) => {
        const main = group.find((c) => c.Labels?.[LABEL.role] !== "bridge");
        const labels = main?.Labels ?? {};
        const candidate: Adoptable | undefined =
          main &&
          labels[LABEL.role] === "instance" &&
          group.every((c) => c.State === "running") &&
          wanted.has(`${labels[LABEL.function]}@${labels[LABEL.version]}`) &&
          labels[LABEL.dir] &&
          labels[LABEL.token] &&
          labels[LABEL.spec]
            ? {
                containers: [main.Id, ...group.filter((c) => c !== main).map((c) => c.Id)],
                dir: labels[LABEL.dir] ?? "",
                token: labels[LABEL.token] ?? "",
                spec: labels[LABEL.spec] ?? "",
                runtime: labels[LABEL.runtime] === "docker" ? "docker" : labels[LABEL.runtime] === "node" ? "node" : "bun",
                fn: labels[LABEL.function] ?? "",
                version: Number(labels[LABEL.version]),
              }
            : undefined;
        if (candidate && (await answers(candidate))) {
          const key = `${candidate.fn}@${candidate.version}`;
          adoptables.set(key, [...(adoptables.get(key) ?? []), candidate]);
          for (const id of candidate.containers) adoptableContainers.set(id, candidate);
          keepDirs.add(resolve(candidate.dir));
          adopted++;
          return;
        }
        for (const c of group) {
          await docker
            .getContainer(c.Id)
            .remove({ force: true, v: true })
            .catch((err: unknown) => ignoreGone(err));
          removed++;
        }
      }),
    );
    // Folders of instances gone with the earlier run (forge was killed before it could clean up).
    const root = join(dataDir, "instances");
    const live = new Set([...instances.values()].map((i) => resolve(i.dir)));
    for (const name of await readdir(root).catch(() => [] as string[])) {
      const dir = join(root, name);
      if (!keepDirs.has(dir) && !live.has(dir)) await rm(dir, { recursive: true, force: true });
    }
    adoption.kept += adopted;
    adoption.removed += removed;
    logger.debug(`containers of an earlier run: ${adopted} kept for adoption, ${removed} removed`);
    return { adopted, removed };
  }

  async function answers(candidate: Adoptable): Promise<boolean> {
    try {
      const info = await health({ socketPath: join(candidate.dir, SOCKET) }, candidate.token, AbortSignal.timeout(2_000));
      return info.ok && (candidate.runtime === "docker" || (info.function === candidate.fn && info.version === candidate.version));
    } catch {
      return false;
    }
  }

  async function claimAdoptable(spec: InstanceSpec, image: string): Promise<InstanceHandle | undefined> {
    const key = `${spec.function}@${spec.version}`;
    const list = adoptables.get(key);
    const wantedSpec = specHash(spec, image);
    while (list && list.length > 0) {
      const index = list.findIndex((a) => a.spec === wantedSpec);
      if (index < 0) return undefined;
      const [candidate] = list.splice(index, 1);
      if (!candidate) return undefined;
      for (const id of candidate.containers) adoptableContainers.delete(id);
      if (!(await answers(candidate))) {
        await removeContainers(candidate.containers);
        continue;
      }
      const instance = newInstance(
        { id: spec.id, spec, endpoint: { socketPath: join(candidate.dir, SOCKET) }, controlToken: candidate.token, startedAt: Date.now() },
        candidate.dir,
      );
      instance.containers.push(...candidate.containers);
      for (const id of candidate.containers) byContainer.set(id, instance);
      instances.set(spec.id, instance);
      instance.ready = true;
      const main = candidate.containers[0];
      if (main) follow(instance, main, Math.floor(Date.now() / 1000));
      adoption.claimed++;
      logger.debug(`adopted the container of ${spec.function} v${spec.version} left by an earlier run`);
      return instance.handle;
    }
    return undefined;
  }

  function dropAdoptable(candidate: Adoptable, why: string): void {
    const list = adoptables.get(`${candidate.fn}@${candidate.version}`);
    const index = list?.indexOf(candidate) ?? -1;
    if (list && index >= 0) list.splice(index, 1);
    for (const id of candidate.containers) adoptableContainers.delete(id);
    logger.debug(`removing an adopted container of ${candidate.fn} v${candidate.version}: ${why}`);
    void removeContainers(candidate.containers).then(() => rm(candidate.dir, { recursive: true, force: true }));
  }

  async function dropUnclaimed(): Promise<ReconcileReport> {
    const leftovers = [...adoptables.values()].flat();
    adoptables.clear();
    await Promise.all(
      leftovers.map(async (candidate) => {
        for (const id of candidate.containers) adoptableContainers.delete(id);
        await removeContainers(candidate.containers);
        await rm(candidate.dir, { recursive: true, force: true });
        adoption.removed += candidate.containers.length;
      }),
    );
    const report = { adopted: adoption.claimed, removed: adoption.removed };
    if (adoption.kept > 0 || adoption.removed > 0) {
      logger.info(`containers of an earlier run: ${report.adopted} instances adopted, ${report.removed} containers removed`);
    }
    return report;
  }

  async function removeContainers(ids: string[]): Promise<void> {
    for (const id of [...ids].reverse()) {
      await docker
        .getContainer(id)
        .remove({ force: true, v: true })
        .catch((err: unknown) => ignoreGone(err));
    }
  }

  // --- the rest of the Driver ---

  function onExit(listener: (info: ExitInfo) => void): () => void {
    exitListeners.add(listener);
    return () => exitListeners.delete(listener);
  }

  function onLog(listener: (line: LogLine) => void): () => void {
    logListeners.add(listener);
    return () => logListeners.delete(listener);
  }

  async function dispose(): Promise<void> {
    if (disposed) return;
    disposed = true;
    const leftovers = [...adoptables.values()].flat();
    adoptables.clear();
    await Promise.all([
      ...[...instances.keys()].map((id) => stop(id)),
      ...leftovers.map(async (candidate) => {
        await removeContainers(candidate.containers);
        await rm(candidate.dir, { recursive: true, force: true });
      }),
    ]);
    events.close();
  }

  return {
    name: "docker",
    owner,
    start,
    stop,
    list,
    logs,
    onExit,
    onLog,
    setMemory,
    memoryUsage,
    specialized,
    placeArtifact,
    reconcile,
    dropUnclaimed,
    containersOf: (id) => [...(instances.get(id)?.containers ?? [])],
    egressNetwork: opts.egressNetwork,
    prepareEgress,
    dispose,
    [Symbol.asyncDispose]: dispose,
  };
}

// --- internal ---

/** Looks at a container's cgroup before concluding this host's are not readable. */
const LAYOUT_LOOKS = 3;
/** Containers whose stats the engine is asked for at once, when the cgroup files are not readable. */
const STATS_CONCURRENCY = 8;

/** The part of the engine's container stats memoryUsage reads (v1 names total_inactive_file, v2 inactive_file). */
interface EngineStats {
  memory_stats?: { usage?: number; stats?: { total_inactive_file?: number; inactive_file?: number } };
}

/** What a version image says of the function inside it. */
interface ImageFolder {
  bundle: string;
  dir?: string;
}

function toEnv(env: Record<string, string>): string[] {
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

/** CPU weight follows memory, as on Lambda: 1 GiB gets the engine's default weight (1024). */
function cpuShares(memoryMb: number): number {
  return Math.min(4096, Math.max(128, Math.round(memoryMb)));
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
