/**
 * The docker backend: one Postgres container per database, `forge-pg-<jobId>`, from
 * FORGE_POSTGRES_IMAGE (forge/postgres:15, built by `forge images build postgres`; any image
 * with the official postgres image's contract works). Its data lives in a named volume of
 * the same name; it is published on 127.0.0.1 only, on a port picked once and kept across
 * restarts of the container; it runs hardened (no capabilities, no new privileges, a
 * read-only root, a pids and a memory limit) as the image's non-root user.
 *
 * Idempotent by name: a second attempt finds the container a first one left, checks by its
 * labels that it belongs to this job, reads the credentials back from its environment, and
 * starts it if needed.
 */
import { createServer } from "node:net";
import type { ConsolaInstance } from "consola";
import type Docker from "dockerode";
import type { Connection, Credentials } from "../job.ts";
import { PermanentError } from "../queue.ts";
import { databaseName, randomSecret, waitForLogin, type CreateContext, type DatabaseBackend, type JobRef } from "./backend.ts";

export const DATABASE_LABELS = {
  managed: "dev.forge.managed",
  role: "dev.forge.role",
  job: "dev.forge.job",
  service: "dev.forge.service",
} as const;

export interface DockerBackendOptions {
  docker: Docker;
  /** The Postgres image. */
  image: string;
  /** Memory limit of a database container, MiB. Default 512. */
  memoryMb?: number;
  /** How long a new container may take to accept a login, ms. Default 60000. */
  readyTimeoutMs?: number;
  logger?: ConsolaInstance;
}

export function createDockerBackend(options: DockerBackendOptions): DatabaseBackend {
  return new DockerBackend(options);
}

export function containerName(jobId: string): string {
  return `forge-pg-${jobId}`;
}

/** The internal network (no route out) a database shares with the instances bound to it. */
export function networkName(jobId: string): string {
  return `forge-db-${jobId}`;
}

// --- internal ---

const PG_PORT = "5432/tcp";
const DATA_DIR = "/var/lib/postgresql/data";

interface Inspected {
  running: boolean;
  restarts: number;
  labels: Record<string, string>;
  env: Map<string, string>;
  hostPort: number | undefined;
}

class DockerBackend implements DatabaseBackend {
  readonly name = "docker" as const;
  private readonly docker: Docker;

  constructor(private readonly o: DockerBackendOptions) {
    this.docker = o.docker;
  }

  plan(job: JobRef): Credentials {
    return { username: `u_${randomSecret(6)}`, password: randomSecret(), database: databaseName(job.service_name) };
  }

  async create(job: JobRef, planned: Credentials, ctx: CreateContext): Promise<Connection> {
    const name = containerName(job.id);
    // 1. find what an earlier attempt left, or create the container
    let found = await this.inspect(name);
    if (!found) {
      await this.createContainer(job, planned);
      found = await this.inspect(name);
      if (!found) throw new Error(`container ${name} vanished right after it was created`);
    } else {
      this.o.logger?.info(`database ${job.id}: adopting container ${name} left by an earlier attempt`);
    }
    if (found.labels[DATABASE_LABELS.job] !== job.id) {
      throw new PermanentError(`a container named ${name} exists and does not belong to forge job ${job.id}; forge will not touch it`);
    }
    // 2. credentials as the container has them (an adopted one is the truth)
    const creds: Credentials = {
      username: found.env.get("POSTGRES_USER") ?? planned.username,
      password: found.env.get("POSTGRES_PASSWORD") ?? planned.password,
      database: found.env.get("POSTGRES_DB") ?? planned.database,
    };
    // 3. start it
    if (!found.running) {
      try {
        await this.docker.getContainer(name).start();
      } catch (err) {
        if (statusOf(err) !== 304) {
          // Most often its port was taken meanwhile: remove it, so the next attempt picks a new one.
          await this.destroy(job).catch(() => {});
          throw new Error(`could not start ${name}: ${messageOf(err)}`);
        }
      }
      found = await this.inspect(name);
    }
    const restarts = found?.restarts ?? 0;
    const port = found?.hostPort;
    if (!port) throw new Error(`container ${name} publishes no port for ${PG_PORT}`);
    const conn: Connection = { host: "127.0.0.1", port, ...creds };
    this.o.logger?.info(`database ${job.id}: container ${name} on 127.0.0.1:${port}, waiting for a login`);
    // 4. ready when it accepts a login, racing against the container's exit
    await waitForLogin(conn, {
      timeoutMs: this.o.readyTimeoutMs ?? 60_000,
      ctx,
      check: async () => {
        const now = await this.inspect(name);
        if (!now) throw new Error(`container ${name} was removed while starting`);
        // Under its restart policy a crashing Postgres comes back: count restarts, not just the state.
        if (!now.running || now.restarts > restarts) throw new Error(`container ${name} exited while starting: ${await this.logTail(name)}`);
      },
    });
    return conn;
  }

  async reachFromContainers(job: JobRef): Promise<{ host: string; port: number; network: string }> {
    const network = networkName(job.id);
    const name = containerName(job.id);
    // 1. the network, created once (internal: the instances on it reach the database and nothing else)
    const exists = await this.docker
      .getNetwork(network)
      .inspect()
      .then(
        () => true,
        (err: unknown) => {
          if (statusOf(err) === 404) return false;
          throw err;
        },
      );
    if (!exists) {
      await this.docker
        .createNetwork({ Name: network, Internal: true, Labels: { [DATABASE_LABELS.managed]: "true", [DATABASE_LABELS.role]: "database-network", [DATABASE_LABELS.job]: job.id } })
        .catch((err: unknown) => {
          if (statusOf(err) !== 409) throw err; // created meanwhile by another deploy
        });
    }
    // 2. the database joins it, under its container name
    await this.docker
      .getNetwork(network)
      .connect({ Container: name })
      .catch((err: unknown) => {
        // 403: already connected
        if (statusOf(err) !== 403 && !/already exists/i.test(messageOf(err))) throw err;
      });
    return { host: name, port: 5432, network };
  }

  async destroy(job: JobRef): Promise<void> {
    const name = containerName(job.id);
    const found = await this.inspect(name);
    if (found && found.labels[DATABASE_LABELS.job] === job.id) {
      await this.docker
        .getContainer(name)
        .remove({ force: true, v: true })
        .catch((err: unknown) => {
          if (statusOf(err) !== 404) throw err;
        });
    }
    const volume = this.docker.getVolume(name);
    const labels = await volume.inspect().then(
      (v) => (v.Labels ?? {}) as Record<string, string>,
      (err: unknown) => {
        if (statusOf(err) === 404) return undefined;
        throw err;
      },
    );
    if (labels?.[DATABASE_LABELS.job] === job.id) {
      await volume.remove().catch((err: unknown) => {
        if (statusOf(err) !== 404) throw err;
      });
    }
    // Instances of functions still bound keep the network busy (409): it stays behind, empty once
    // they stop (`docker network prune` takes it).
    await this.docker
      .getNetwork(networkName(job.id))
      .remove()
      .catch((err: unknown) => {
        if (statusOf(err) !== 404 && statusOf(err) !== 409 && statusOf(err) !== 403) throw err;
      });
  }

  async close(): Promise<void> {}

  // --- private ---

  private async createContainer(job: JobRef, creds: Credentials): Promise<void> {
    const name = containerName(job.id);
    const labels = {
      [DATABASE_LABELS.managed]: "true",
      [DATABASE_LABELS.role]: "database",
      [DATABASE_LABELS.job]: job.id,
      [DATABASE_LABELS.service]: job.service_name,
    };
    await this.docker.createVolume({ Name: name, Labels: labels });
    const port = await freePort();
    try {
      await this.docker.createContainer({
        name,
        Image: this.o.image,
        Env: [`POSTGRES_USER=${creds.username}`, `POSTGRES_PASSWORD=${creds.password}`, `POSTGRES_DB=${creds.database}`, `PGDATA=${DATA_DIR}`],
        Cmd: ["postgres", "-c", "unix_socket_directories=/tmp"],
        Labels: labels,
        ExposedPorts: { [PG_PORT]: {} },
        HostConfig: {
          PortBindings: { [PG_PORT]: [{ HostIp: "127.0.0.1", HostPort: String(port) }] },
          Mounts: [{ Type: "volume", Source: name, Target: DATA_DIR }],
          CapDrop: ["ALL"],
          SecurityOpt: ["no-new-privileges"],
          ReadonlyRootfs: true,
          // The root is read-only: the Unix socket goes to the /tmp tmpfs (see Cmd), data to the volume.
          Tmpfs: { "/tmp": "rw,nosuid,nodev,size=64m,mode=1777" },
          PidsLimit: 256,
          Memory: (this.o.memoryMb ?? 512) * 1024 * 1024,
          RestartPolicy: { Name: "unless-stopped" },
        },
      });
    } catch (err) {
      const status = statusOf(err);
      if (status === 409) return; // another attempt created it meanwhile: adopted by the caller
      if (status === 404) {
        throw new PermanentError(
          `the postgres image ${this.o.image} is not on this Docker engine: build it with \`forge images build postgres\`, or set FORGE_POSTGRES_IMAGE to an image you have (e.g. postgres:15)`,
        );
      }
      throw err;
    }
  }

  private async inspect(name: string): Promise<Inspected | undefined> {
    try {
      const info = await this.docker.getContainer(name).inspect();
      const env = new Map<string, string>();
      for (const kv of info.Config?.Env ?? []) {
        const eq = kv.indexOf("=");
        if (eq > 0) env.set(kv.slice(0, eq), kv.slice(eq + 1));
      }
      const bound = info.NetworkSettings?.Ports?.[PG_PORT]?.[0]?.HostPort ?? info.HostConfig?.PortBindings?.[PG_PORT]?.[0]?.HostPort;
      const running = info.State?.Running === true && info.State.Restarting !== true;
      return { running, restarts: info.RestartCount ?? 0, labels: info.Config?.Labels ?? {}, env, hostPort: bound ? Number(bound) : undefined };
    } catch (err) {
      if (statusOf(err) === 404) return undefined;
      throw err;
    }
  }

  private async logTail(name: string): Promise<string> {
    try {
      const raw = (await this.docker.getContainer(name).logs({ stdout: true, stderr: true, tail: 15 })) as unknown as Buffer;
      return demux(raw).trim().split("\n").slice(-15).join("\n") || "(no output)";
    } catch {
      return "(no logs)";
    }
  }
}

/** Docker's log stream of a container without a TTY: 8-byte frame headers before each chunk. */
function demux(buf: Buffer): string {
  let out = "";
  let off = 0;
  while (off + 8 <= buf.length) {
    const size = buf.readUInt32BE(off + 4);
    out += buf.subarray(off + 8, off + 8 + size).toString("utf8");
    off += 8 + size;
  }
  return off === 0 ? buf.toString("utf8") : out;
}

/** A port free on 127.0.0.1 right now (the container keeps it across restarts, unlike one Docker picks). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function statusOf(err: unknown): number | undefined {
  return typeof err === "object" && err !== null && "statusCode" in err ? Number((err as { statusCode: unknown }).statusCode) : undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
