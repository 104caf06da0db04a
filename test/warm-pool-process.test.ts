import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { warmPoolContract } from "./_warm-pool.case.ts";

warmPoolContract({
  driver: "process",
  async kill(forge, id) {
    // The process driver keeps each instance in <dataDir>/instances/<id>; find its shim by its env.
    for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
      let env = "";
      try {
        env = readFileSync(join("/proc", pid, "environ"), "utf8");
      } catch {
        continue;
      }
      if (env.includes(`FORGE_INSTANCE_ID=${id}\u0000`) && env.includes(forge.dataDir)) {
        process.kill(Number(pid), "SIGKILL");
        return;
      }
    }
    throw new Error(`no process found for instance ${id}`);
  },
});
