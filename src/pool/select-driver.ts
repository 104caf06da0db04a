/**
 * Which driver forge runs: FORGE_DRIVER=docker or process as told; auto picks docker when
 * the engine (DOCKER_HOST, else /var/run/docker.sock) answers a ping, else process. With
 * docker, the runtime image is built first when it is missing or stale (nothing can be
 * pulled), and the caller gets the engine to build function images with.
 */
import type { ConsolaInstance } from "consola";
import Dockerode from "dockerode";
import { buildRuntimeImage } from "../build/index.ts";
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
}

export type SelectDriverConfig = Pick<Config, "driver" | "dockerHost" | "dataDir" | "runtimeImage"> & Partial<Pick<Config, "startTimeoutMs">>;

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
  const processDriver = (reason: string): SelectedDriver => ({
    driver: createProcessDriver({ dataDir: config.dataDir, logger, ...(config.startTimeoutMs ? { startTimeoutMs: config.startTimeoutMs } : {}) }),
    reason,
    reconcile: async () => {},
    dropUnclaimed: async () => {},
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

  const driver = createDockerDriver({
    docker,
    dataDir: config.dataDir,
    runtimeImage: config.runtimeImage,
    logger,
    ...(config.startTimeoutMs ? { startTimeoutMs: config.startTimeoutMs } : {}),
  });
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
  };
}
