import { defineCommand } from "citty";
import { createLogger } from "../observe/index.ts";
import { loadConfig, type Config } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { startServer } from "../server.ts";
import { clientSettings, connectionFlags, intArg, ui } from "./_shared.ts";
import { assertTargetName, updateTargets } from "./_targets.ts";

export default defineCommand({
  meta: { name: "up", description: "start the forge server on its embedded defaults" },
  args: {
    port: { type: "string", description: "port to listen on (0 picks a free one); default FORGE_PORT or 8080" },
    host: { type: "string", description: "interface to listen on; default FORGE_HOST or 127.0.0.1" },
    driver: { type: "string", description: "auto | docker | process; default FORGE_DRIVER or auto" },
    target: { type: "string", description: "the name under which the CLI's config keeps this forge's URL and key (default local)" },
  },
  async run({ args }) {
    // --target, --url and --key are every command's flags: main.ts took them out of argv.
    const flags = connectionFlags();
    if (flags.url !== undefined || flags.key !== undefined) {
      throw new ForgeError(ErrorCode.BadRequest, 400, `forge up takes no ${flags.url !== undefined ? "--url" : "--key"}: they say which forge other commands talk to`, {
        hint: "listen with --host and --port; set its key with FORGE_API_KEY",
      });
    }
    const target = assertTargetName(flags.target ?? "local");
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
    // Saved before the key is printed: whoever waits for that line finds the target written.
    const saved = remember(target, apex, server.apiKey);
    ui.info(`API key${server.apiKeyGenerated ? ` (generated, ${server.cluster ? "kept in Postgres for every node" : "saved in " + config.dataDir})` : ""}: ${server.apiKey}`);
    if (saved.ok) ui.info(saved.message);
    else ui.warn(saved.message);
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

// --- internal ---

/**
 * Saves this forge's URL and key as target `name` of the CLI's config, so that commands run
 * from any folder find it. It becomes current when there is none, or when it already was.
 * A config that cannot be written is a warning: the server runs anyway.
 */
function remember(name: string, listenUrl: string, key: string): { ok: boolean; message: string } {
  const u = new URL(listenUrl);
  // A forge listening on every interface is reached on loopback.
  if (u.hostname === "0.0.0.0") u.hostname = "127.0.0.1";
  if (u.hostname === "[::]") u.hostname = "[::1]";
  const url = u.origin;
  let settings: ReturnType<typeof clientSettings> | undefined;
  try {
    settings = clientSettings();
    const path = settings.configFile;
    const current = updateTargets(
      path,
      (file) => {
        file.targets[name] = { url, key };
        if (file.current === undefined || file.current === name) file.current = name;
        return file.current === name;
      },
      settings.configShown,
    );
    return { ok: true, message: `the CLI reaches it as target ${name}${current ? " (current)" : ` (the current target stays; use --target ${name} or \`forge targets use ${name}\`)`}, saved in ${settings.configShown}` };
  } catch (err) {
    return { ok: false, message: `could not save target ${name} in ${settings?.configShown ?? "the CLI's config"}: ${err instanceof Error ? err.message : String(err)}` };
  }
}
