/**
 * Which driver forge runs: FORGE_DRIVER=docker or process as told; auto picks docker when
 * the engine (DOCKER_HOST, else /var/run/docker.sock) answers a ping, else process. With
 * docker, the runtime image is built first when it is missing or stale (nothing can be
 * pulled), and the caller gets the engine to build function images with.
 */
import type { ConsolaInstance } from "consola";
import Dockerode from "dockerode";
import { buildRuntimeImage, defaultRuntimeImage } from "../build/index.ts";
import { buildNodeShim, findNode, type NodeBinary } from "../build/node-shim.ts";
import { join } from "node:path";
import type { Config } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { createDockerDriver, type ActiveVersion } from "./docker-driver.ts";
import type { Driver } from "./driver.ts";
import { createProcessDriver } from "./process-driver.ts";

export const DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock";

export interface SelectedDriver {
  driver: Driver;
  /** Why this driver, for `forge up` to print. */
  reason: string;
  /** The engine, when the driver is docker (function images are built on it). */
  docker?: Dockerode;
  /** Adopts or removes what an earlier run left (docker); call before the pool starts. */
  reconcile(active: ActiveVersion[]): Promise<void>;
  /** Removes what reconcile kept and the restored pools did not claim; call after restoring them. */
  dropUnclaimed(): Promise<void>;
  /**
   * The networks that give instances outbound access, which a function joins unless its
   * forge.json says "network": "none", and which stem cells start on (so that a function with
   * these networks takes a cell as it is): docker, [FORGE_EGRESS_NETWORK] (empty when
   * "none"). Absent on the process driver: its instances share the host's network.
   */
  egressNetworks?: string[];
  /** Runtime "node": its binary and (docker) image; absent when this machine has no usable node. */
  node?: NodeBinary & { image?: string };
  /** Why runtime "node" is not available, when it is not (for `forge up` to say). */
  nodeProblem?: string;
}

export type SelectDriverConfig = Pick<Config, "driver" | "dockerHost" | "dataDir" | "runtimeImage"> &
  Partial<Pick<Config, "startTimeoutMs" | "egressNetwork" | "nodeBin" | "nodeImage">>;

/** A dockerode client for DOCKER_HOST (unix://, tcp://, http(s)://) or the default socket. */
export function connectDocker(dockerHost?: string): Dockerode {
  if (!dockerHost) return new Dockerode({ socketPath: DEFAULT_DOCKER_SOCKET });
  let url: URL;
  try {
    url = new URL(dockerHost);
  } catch {
    url = new URL("invalid:");
  }
  if (url.protocol === "unix:" && url.pathname) return new Dockerode({ socketPath: url.pathname });
  if ((url.protocol === "tcp:" || url.protocol === "http:" || url.protocol === "https:") && url.hostname) {
    const protocol = url.protocol === "https:" ? "https" : "http";
    return new Dockerode({ host: url.hostname, port: Number(url.port) || (protocol === "https" ? 2376 : 2375), protocol });
  }
  throw new ForgeError(ErrorCode.InvalidConfig, 400, `DOCKER_HOST=${JSON.stringify(dockerHost)} is not an engine address forge understands`, {
    hint: "use unix:///var/run/docker.sock or tcp://127.0.0.1:2375, or unset DOCKER_HOST",
  });
}

/** Does the engine answer? Resolves with undefined when it does, else with why not. */
export async function pingDocker(docker: Dockerode, timeoutMs = 2_000): Promise<string | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      docker.ping(),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs))),
    ]);
    return undefined;
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  } finally {
    clearTimeout(timer);
  }
}

export async function selectDriver(config: SelectDriverConfig, logger: ConsolaInstance): Promise<SelectedDriver> {
  const where = config.dockerHost ?? DEFAULT_DOCKER_SOCKET;
  const nodeFound = await findNode(config.nodeBin ?? "node");
  const node = "node" in nodeFound ? nodeFound.node : undefined;
  const nodeProblem = "problem" in nodeFound ? nodeFound.problem : undefined;
  const processDriver = (reason: string): SelectedDriver => ({
    driver: createProcessDriver({
      dataDir: config.dataDir,
      logger,
      ...(config.startTimeoutMs ? { startTimeoutMs: config.startTimeoutMs } : {}),
      // The node shim is built on first use, into the data folder (instances of their own uids read it).
      ...(node ? { node: { bin: node.bin, shim: () => buildNodeShim(join(config.dataDir, "runtimes", "node")) } } : {}),
    }),
    reason,
    reconcile: async () => {},
    dropUnclaimed: async () => {},
    ...(node ? { node } : { nodeProblem }),
  });
  if (config.driver === "process") return processDriver("FORGE_DRIVER=process");

  const docker = connectDocker(config.dockerHost);
  const problem = await pingDocker(docker);
  if (problem !== undefined) {
    if (config.driver === "auto") return processDriver(`auto: no Docker engine answered at ${where} (${problem})`);
    throw new ForgeError(ErrorCode.DriverUnavailable, 503, `FORGE_DRIVER=docker, and the Docker engine at ${where} does not answer: ${problem}`, {
      hint: "start dockerd (or point DOCKER_HOST at an engine), or use FORGE_DRIVER=process",
    });
  }

  // Nothing can be pulled: a missing or stale runtime image is built here from this machine's bun.
  const built = await buildRuntimeImage(docker, "bun", {
    image: config.runtimeImage,
    onLog: (line) => logger.debug(line),
  }).catch((err: unknown) => {
    throw new ForgeError(ErrorCode.DriverUnavailable, 503, `the runtime image ${config.runtimeImage} could not be built`, {
      hint: "see the cause; `forge images build bun` shows the whole build log",
      cause: err,
    });
  });
  if (built.built) logger.info(`built the runtime image ${built.image} (${built.reason}) in ${built.ms} ms`);
  // The node image likewise, from this machine's node; without one, node functions cannot run here.
  let nodeImage: string | undefined;
  if (node) {
    const image = config.nodeImage ?? defaultRuntimeImage("node", node.version);
    const builtNode = await buildRuntimeImage(docker, "node", { image, nodePath: node.bin, onLog: (line) => logger.debug(line) }).catch((err: unknown) => {
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, `the runtime image ${image} could not be built`, {
        hint: "see the cause; `forge images build node` shows the whole build log",
        cause: err,
      });
    });
    if (builtNode.built) logger.info(`built the runtime image ${builtNode.image} (${builtNode.reason}) in ${builtNode.ms} ms`);
    nodeImage = image;
  }

  const driver = createDockerDriver({
    docker,
    dataDir: config.dataDir,
    runtimeImage: config.runtimeImage,
    ...(nodeImage ? { nodeImage } : {}),
    logger,
    ...(config.startTimeoutMs ? { startTimeoutMs: config.startTimeoutMs } : {}),
    ...(config.egressNetwork ? { egressNetwork: config.egressNetwork } : {}),
  });
  // Now, not at the first instance: a network forge cannot use stops start-up, and whether
  // the host is closed to instances is said where the operator looks.
  const egress = await driver.prepareEgress().catch(async (err: unknown) => {
    await driver.dispose();
    throw err;
  });
  if (!egress) {
    logger.info("egress: none (FORGE_EGRESS_NETWORK=none): functions on docker reach no network but their databases'");
  } else if (egress.host.ok) {
    logger.info(`egress: functions reach the outside through the Docker network ${egress.network}${egress.created ? " (created)" : ""}; not each other, not this host (iptables chain ${egress.host.chain})`);
  } else {
    logger.warn(
      `egress: functions on the Docker network ${egress.network} can reach this host's ports (forge's own when FORGE_HOST is not loopback), because forge could not close them: ${egress.host.problem}\n` +
        `  run forge as root on the Docker host, or add these rules there:\n    ${egress.host.rules.replaceAll("\n", "\n    ")}\n` +
        `  or give functions no egress: FORGE_EGRESS_NETWORK=none`,
    );
  }
  return {
    driver,
    reason: config.driver === "docker" ? `FORGE_DRIVER=docker, engine at ${where}` : `auto: the Docker engine at ${where} answered`,
    docker,
    reconcile: async (active) => {
      await driver.reconcile(active);
    },
    dropUnclaimed: async () => {
      await driver.dropUnclaimed();
    },
    egressNetworks: egress ? [egress.network] : [],
    ...(node ? { node: { ...node, ...(nodeImage ? { image: nodeImage } : {}) } } : { nodeProblem }),
  };
}
