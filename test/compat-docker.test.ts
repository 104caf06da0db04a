/** Real Lambda and Workers code on the docker driver (the suite is test/_compat.case.ts). Skipped without an engine, failed under CI. */
import { test } from "bun:test";
import { compatSuite } from "./_compat.case.ts";
import { requireDocker } from "./_services.ts";

if (await requireDocker()) compatSuite("docker");
else test.skip("real functions on the docker driver (no Docker engine)", () => {});
