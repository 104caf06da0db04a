#!/usr/bin/env bun
/** The `forge` CLI: one command a file; `run(argv)` returns the exit code so tests can call it. */
import { defineCommand, runCommand, runMain, type CommandDef } from "citty";
import { takeConnectionFlags } from "./_connection.ts";
import { printError, setConnectionFlags } from "./_shared.ts";

export const forge = defineCommand({
  meta: { name: "forge", version: "0.1.0", description: "a self-hosted serverless runtime with warm stem cells" },
  subCommands: {
    up: () => import("./up.ts").then((m) => m.default as CommandDef),
    deploy: () => import("./deploy.ts").then((m) => m.default as CommandDef),
    dev: () => import("./dev.ts").then((m) => m.default as CommandDef),
    invoke: () => import("./invoke.ts").then((m) => m.default as CommandDef),
    list: () => import("./list.ts").then((m) => m.default as CommandDef),
    info: () => import("./info.ts").then((m) => m.default as CommandDef),
    delete: () => import("./delete.ts").then((m) => m.default as CommandDef),
    versions: () => import("./versions.ts").then((m) => m.default as CommandDef),
    rollback: () => import("./rollback.ts").then((m) => m.default as CommandDef),
    schedule: () => import("./schedule.ts").then((m) => m.default as CommandDef),
    schedules: () => import("./schedules.ts").then((m) => m.default as CommandDef),
    unschedule: () => import("./unschedule.ts").then((m) => m.default as CommandDef),
    logs: () => import("./logs.ts").then((m) => m.default as CommandDef),
    bench: () => import("./bench.ts").then((m) => m.default as CommandDef),
    images: () => import("./images.ts").then((m) => m.default as CommandDef),
    db: () => import("./db.ts").then((m) => m.default as CommandDef),
    worker: () => import("./worker.ts").then((m) => m.default as CommandDef),
    nodes: () => import("./nodes.ts").then((m) => m.default as CommandDef),
    login: () => import("./login.ts").then((m) => m.default as CommandDef),
    logout: () => import("./logout.ts").then((m) => m.default as CommandDef),
    targets: () => import("./targets.ts").then((m) => m.default as CommandDef),
  },
});

/**
 * Runs the CLI on `argv`. --target, --url and --key are every command's: they are taken out
 * here, once, for the client (`client()` in _shared.ts), and the command parses the rest.
 */
export async function run(rawArgv: string[]): Promise<number> {
  let argv: string[];
  try {
    const taken = takeConnectionFlags(rawArgv);
    argv = taken.argv;
    setConnectionFlags(taken.flags);
  } catch (err) {
    printError(err, rawArgv.includes("--json"));
    return 1;
  }
  if (argv.length === 0 || argv.includes("--help") || argv.includes("-h") || (argv.length === 1 && argv[0] === "--version")) {
    await runMain(forge, { rawArgs: argv });
    return 0;
  }
  try {
    await runCommand(forge, { rawArgs: argv });
    return 0;
  } catch (err) {
    printError(err, argv.includes("--json"));
    return 1;
  }
}

if (import.meta.main) process.exit(await run(process.argv.slice(2)));
