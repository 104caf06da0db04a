import { test } from "bun:test";
import { warmPoolContract } from "./_warm-pool.case.ts";
import { requireDocker } from "./_services.ts";

const engine = await requireDocker();
if (!engine) {
  test.skip("warm pool on the docker driver (no Docker engine)", () => {});
} else {
  const { docker } = engine;
  warmPoolContract({
    driver: "docker",
    async kill(_forge, id) {
      const [c] = await docker.listContainers({ filters: { label: [`dev.forge.instance=${id}`] } });
      if (!c) throw new Error(`no container for instance ${id}`);
      await docker.getContainer(c.Id).kill({ signal: "SIGKILL" });
    },
  });
}
