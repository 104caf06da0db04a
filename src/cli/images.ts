import { defineCommand } from "citty";
import { buildRuntimeImage, defaultRuntimeImage, RUNTIME_NAMES, type RuntimeImageResult, type RuntimeName } from "../build/index.ts";
import { findNode } from "../build/node-shim.ts";
import { loadConfig } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { connectDocker, pingDocker } from "../pool/index.ts";
import { jsonArg, output, ui } from "./_shared.ts";

/** `forge images build [bun|node|postgres|all]`: the runtime images, built from this machine (no registry needed). */
export default defineCommand({
  meta: { name: "images", description: "forge's runtime images" },
  subCommands: {
    build: defineCommand({
      meta: { name: "build", description: "build the runtime images offline: bun (from this bun), node (from this node), postgres (debootstrap); skips current ones" },
      args: {
        which: { type: "positional", required: false, description: "bun | node | postgres | all (default all; all skips node where there is none)" },
        force: { type: "boolean", description: "rebuild even when the image is present", default: false },
        quiet: { type: "boolean", description: "do not print the build output", default: false },
        ...jsonArg,
      },
      async run({ args }) {
        const which = String(args.which ?? "all");
        if (which !== "all" && !(RUNTIME_NAMES as readonly string[]).includes(which)) {
          throw new ForgeError(ErrorCode.BadRequest, 400, `unknown runtime image "${which}"`, {
            hint: `use one of ${[...RUNTIME_NAMES, "all"].join(", ")}, e.g. forge images build bun`,
          });
        }
        const config = loadConfig();
        const docker = connectDocker(config.dockerHost);
        const problem = await pingDocker(docker);
        if (problem !== undefined) {
          throw new ForgeError(ErrorCode.DriverUnavailable, 503, `no Docker engine answers at ${config.dockerHost ?? "/var/run/docker.sock"}: ${problem}`, {
            hint: "start dockerd (as root: dockerd &), or point DOCKER_HOST at an engine",
          });
        }
        const found = await findNode(config.nodeBin);
        if (which === "node" && "problem" in found) {
          throw new ForgeError(ErrorCode.DriverUnavailable, 503, `the node runtime image needs a node binary: ${found.problem}`, {
            hint: "install Node.js 20.16 or later, or set FORGE_NODE_BIN to its path",
          });
        }
        const names: RuntimeName[] = which === "all" ? RUNTIME_NAMES.filter((n) => n !== "node" || "node" in found) : [which as RuntimeName];
        const quiet = Boolean(args.quiet) || Boolean(args.json);
        const results: RuntimeImageResult[] = [];
        for (const name of names) {
          const node = "node" in found ? found.node : undefined;
          const image =
            name === "bun" ? config.runtimeImage : name === "node" ? (config.nodeImage ?? defaultRuntimeImage("node", node?.version)) : config.postgresImage;
          if (!quiet) ui.info(`${image}: checking`);
          const result = await buildRuntimeImage(docker, name, {
            image,
            ...(name === "node" && node ? { nodePath: node.bin } : {}),
            force: Boolean(args.force),
            ...(quiet ? {} : { onLog: (line: string) => process.stderr.write(`  ${line}\n`) }),
          });
          results.push(result);
          if (!quiet) {
            if (result.built) ui.success(`${image}: built in ${(result.ms / 1000).toFixed(1)} s (${result.reason})`);
            else ui.success(`${image}: ${result.reason}, nothing to do`);
          }
        }
        output(Boolean(args.json), results, () => {});
      },
    }),
  },
});
