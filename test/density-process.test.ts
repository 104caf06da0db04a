import { densityContract } from "./_density.case.ts";

densityContract({ driver: "process" });
