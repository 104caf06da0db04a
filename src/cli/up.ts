import { defineCommand } from "citty";
import { createLogger } from "../observe/index.ts";
import { loadConfig, type Config } from "../config.ts";
import { startServer } from "../server.ts";
import { intArg, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "up", description: "start the forge server on its embedded defaults" },
  args: {
    port: { type: "string", description: "port to listen on (0 picks a free one); default FORGE_PORT or 8080" },
    host: { type: "string", description: "interface to listen on; default FORGE_HOST or 127.0.0.1" },
    driver: { type: "string", description: "auto | docker | process; default FORGE_DRIVER or auto" },
  },
  async run({ args }) {
    const overrides: Partial<Config> = {};
    const port = intArg(args.port, "port");
    if (port !== undefined) overrides.port = port;
    if (args.host) overrides.host = String(args.host);
    const env = { ...process.env };
    if (args.driver) env.FORGE_DRIVER = String(args.driver);
    const config = loadConfig(env, overrides);
    const logger = createLogger(config.logFormat);
    const server = await startServer(config, { logger });
    const apex = server.url;
    ui.success(`forge listening on ${apex}`);
    ui.info(`driver: ${server.driver} (${server.driverReason})`);
    ui.info(`functions answer at http://<name>.${config.domain}:${server.port}`);
    if (server.cluster) ui.info(`node ${server.cluster.nodeId} of a cluster on Postgres and Redis (${server.cluster.nodes} node${server.cluster.nodes === 1 ? "" : "s"} up)`);
    ui.info(`API key${server.apiKeyGenerated ? ` (generated, ${server.cluster ? "kept in Postgres for every node" : "saved in " + config.dataDir})` : ""}: ${server.apiKey}`);
    await new Promise<void>((resolve) => {
      const stop = (signal: string): void => {
        ui.info(`${signal}: draining in-flight requests and stopping instances`);
        void server.stop().then(resolve, resolve);
      };
      process.once("SIGINT", () => stop("SIGINT"));
      process.once("SIGTERM", () => stop("SIGTERM"));
    });
  },
});
