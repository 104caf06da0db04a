/**
 * Addresses of the services integration tests need (.ci/services.sh starts them and writes
 * .ci/.env). Missing under CI: the test fails; missing elsewhere: it is skipped.
 */
import { existsSync } from "node:fs";
import type Dockerode from "dockerode";
import { buildRuntimeImage } from "../src/build/index.ts";
import { isCI, loadConfig } from "../src/config.ts";
import { connectDocker, pingDocker } from "../src/pool/index.ts";

export interface TestServices {
  /** FORGE_TEST_REDIS_URL */
  redisUrl: string | undefined;
  /** FORGE_TEST_PG_URL: a superuser URL of a Postgres 15 server. */
  pgUrl: string | undefined;
}

export function testServices(env: Record<string, string | undefined> = process.env): TestServices {
  return { redisUrl: env.FORGE_TEST_REDIS_URL || undefined, pgUrl: env.FORGE_TEST_PG_URL || undefined };
}

/** The named services' URLs, or undefined to skip (never under CI: there it throws). */
export function requireServices<K extends keyof TestServices>(...names: K[]): { [P in K]: string } | undefined {
  const all = testServices();
  const missing = names.filter((n) => !all[n]);
  if (missing.length === 0) return all as { [P in K]: string };
  const vars = missing.map((n) => (n === "redisUrl" ? "FORGE_TEST_REDIS_URL" : "FORGE_TEST_PG_URL")).join(", ");
  if (isCI()) throw new Error(`${vars} unset under CI: run .ci/services.sh and source .ci/.env`);
  console.warn(`skipping: ${vars} unset (run .ci/services.sh, then: set -a; . .ci/.env; set +a)`);
  return undefined;
}

/**
 * The Chromium the dashboard's browser tests drive through playwright-core: FORGE_TEST_CHROMIUM,
 * else Debian's /usr/bin/chromium (.ci/services.sh installs it); undefined to skip (never under CI: there it throws).
 */
export function requireChromium(env: Record<string, string | undefined> = process.env): string | undefined {
  const path = env.FORGE_TEST_CHROMIUM || "/usr/bin/chromium";
  if (existsSync(path)) return path;
  if (isCI(env)) throw new Error(`no Chromium at ${path} under CI: run .ci/services.sh (it installs Debian's chromium)`);
  console.warn(`skipping: no Chromium at ${path} (apt-get install chromium, or set FORGE_TEST_CHROMIUM)`);
  return undefined;
}

/** The engine at DOCKER_HOST (or the default socket), or undefined to skip (never under CI: there it throws). */
async function engine(dockerHost: string | undefined): Promise<Dockerode | undefined> {
  const docker = connectDocker(dockerHost);
  const problem = await pingDocker(docker);
  if (problem === undefined) return docker;
  if (isCI()) throw new Error(`no Docker engine answers under CI (${problem}): run .ci/services.sh`);
  console.warn(`skipping: no Docker engine answers (${problem}); run .ci/services.sh`);
  return undefined;
}

/**
 * The Docker engine (DOCKER_HOST or the default socket) with forge's bun runtime image
 * built, or undefined to skip when none answers (never under CI: there it throws).
 */
export async function requireDocker(): Promise<{ docker: Dockerode; runtimeImage: string } | undefined> {
  const config = loadConfig();
  const docker = await engine(config.dockerHost);
  if (!docker) return undefined;
  await buildRuntimeImage(docker, "bun", { image: config.runtimeImage });
  return { docker, runtimeImage: config.runtimeImage };
}

/**
 * The Docker engine and the Postgres image the provisioner's docker backend runs: FORGE_TEST_POSTGRES_IMAGE
 * when set, else FORGE_POSTGRES_IMAGE (forge/postgres:15), built when missing (`forge images build postgres`).
 */
export async function requirePostgresImage(): Promise<{ docker: Dockerode; image: string } | undefined> {
  const config = loadConfig();
  const docker = await engine(config.dockerHost);
  if (!docker) return undefined;
  const override = process.env.FORGE_TEST_POSTGRES_IMAGE;
  if (override) return { docker, image: override };
  const built = await buildRuntimeImage(docker, "postgres", { image: config.postgresImage });
  return { docker, image: built.image };
}
