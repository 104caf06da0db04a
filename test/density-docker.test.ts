import { test } from "bun:test";
import { densityContract } from "./_density.case.ts";
import { requireDocker } from "./_services.ts";

if (!(await requireDocker())) test.skip("density on the docker driver (no Docker engine)", () => {});
else densityContract({ driver: "docker" });
