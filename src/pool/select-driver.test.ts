import { describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { requireDocker } from "../../test/_services.ts";
import { loadConfig } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { connectDocker, selectDriver, type SelectDriverConfig } from "./select-driver.ts";

const quiet = createConsola({ level: -999 });
const engine = await requireDocker();

async function withConfig(overrides: Partial<SelectDriverConfig>, run: (config: SelectDriverConfig) => Promise<void>): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), "forge-sel-"));
  try {
    await run({ driver: "auto", dockerHost: undefined, dataDir, runtimeImage: engine?.runtimeImage ?? `forge/runtime-bun:${Bun.version}`, ...overrides });
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
}

describe("selectDriver", () => {
  test("FORGE_DRIVER=process is taken as told", async () => {
    await withConfig({ driver: "process" }, async (config) => {
      await using selected = await selectDriver(config, quiet).then((s) => Object.assign(s, { [Symbol.asyncDispose]: () => s.driver.dispose() }));
      expect(selected.driver.name).toBe("process");
      expect(selected.reason).toBe("FORGE_DRIVER=process");
      expect(selected.docker).toBeUndefined();
      // Processes share the host's network: no egress network to give or to take away.
      expect(selected.egressNetworks).toBeUndefined();
    });
  });

  test("auto falls back to process when no engine answers, and says why", async () => {
    await withConfig({ dockerHost: "unix:///nonexistent/docker.sock" }, async (config) => {
      const selected = await selectDriver(config, quiet);
      try {
        expect(selected.driver.name).toBe("process");
        expect(selected.reason).toContain("auto: no Docker engine answered at unix:///nonexistent/docker.sock");
      } finally {
        await selected.driver.dispose();
      }
    });
  });

  test("FORGE_DRIVER=docker without an engine stops start-up with a hint", async () => {
    await withConfig({ driver: "docker", dockerHost: "unix:///nonexistent/docker.sock" }, async (config) => {
      const error = await selectDriver(config, quiet).catch((err: unknown) => err);
      expect(error).toBeInstanceOf(ForgeError);
      expect((error as ForgeError).code).toBe(ErrorCode.DriverUnavailable);
      expect((error as ForgeError).hint).toContain("FORGE_DRIVER=process");
    });
  });

  test("a DOCKER_HOST forge cannot use is a 400 naming it", () => {
    for (const bad of ["ftp://example.com", "not a url", "unix://"]) {
      const error = (() => {
        try {
          connectDocker(bad);
        } catch (err) {
          return err;
        }
      })();
      expect(error).toBeInstanceOf(ForgeError);
      expect((error as ForgeError).status).toBe(400);
      expect((error as ForgeError).message).toContain("DOCKER_HOST");
    }
    const modem = (address: string) => connectDocker(address).modem as unknown as { port?: number; host?: string; socketPath?: string };
    expect(modem("tcp://127.0.0.1:2375")).toMatchObject({ host: "127.0.0.1", port: 2375 });
    expect(modem("unix:///run/docker.sock").socketPath).toBe("/run/docker.sock");
  });

  test.skipIf(!engine)("auto picks docker when the engine answers", async () => {
    await withConfig({ dockerHost: loadConfig().dockerHost }, async (config) => {
      const selected = await selectDriver(config, quiet);
      try {
        expect(selected.driver.name).toBe("docker");
        expect(selected.reason).toStartWith("auto: the Docker engine at ");
        expect(selected.docker).toBeDefined();
        // No FORGE_EGRESS_NETWORK in this config: functions get no egress network.
        expect(selected.egressNetworks).toEqual([]);
      } finally {
        await selected.driver.dispose();
      }
    });
  });
});
