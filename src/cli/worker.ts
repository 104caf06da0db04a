import { defineCommand } from "citty";
import { createConsola } from "consola";
import { loadConfig } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { createProvisioning } from "../provision/index.ts";
import { intArg, ui } from "./_shared.ts";

export default defineCommand({
  meta: { name: "worker", description: "run a provisioning worker alone, sharing the job queue in FORGE_REDIS_URL with forge and other workers" },
  args: {
    concurrency: { type: "string", description: "jobs handled at once; default FORGE_PROVISION_CONCURRENCY or 4" },
  },
  async run({ args }) {
    const config = loadConfig();
    if (!config.redisUrl) {
      throw new ForgeError(ErrorCode.InvalidConfig, 400, "forge worker needs FORGE_REDIS_URL", {
        hint: "point it at the Redis forge uses (FORGE_REDIS_URL=redis://host:6379); without Redis the worker inside `forge up` handles every job",
      });
    }
    const concurrency = intArg(args.concurrency, "concurrency") ?? Math.max(1, config.provisionConcurrency);
    if (concurrency < 1) throw new ForgeError(ErrorCode.BadRequest, 400, "--concurrency must be at least 1", { hint: "e.g. --concurrency 4" });
    const logger = createConsola({ level: 3, formatOptions: { date: true, compact: true } });
    const provisioning = await createProvisioning(config, { logger, concurrency });
    ui.success(`forge worker ${process.pid} running`);
    ui.info(provisioning.summary);
    await new Promise<void>((resolve) => {
      const stop = (signal: string): void => {
        ui.info(`${signal}: handing jobs in progress back to the queue`);
        void provisioning.close().then(resolve, resolve);
      };
      process.once("SIGINT", () => stop("SIGINT"));
      process.once("SIGTERM", () => stop("SIGTERM"));
    });
  },
});
