/** Runtime "node" on the docker driver (the suite is test/_node-runtime.case.ts). Skipped without an engine, failed under CI. */
import { test } from "bun:test";
import { nodeRuntimeSuite } from "./_node-runtime.case.ts";
import { requireDocker } from "./_services.ts";

if (await requireDocker()) nodeRuntimeSuite("docker");
else test.skip("runtime node on the docker driver (no Docker engine)", () => {});
