/**
 * Function logs on the docker driver: lines a container writes (demultiplexed from Docker's
 * log stream) are found with `forge logs` under their request id, and `-f` follows them.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, followLogsUntil, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker } from "./_services.ts";

const engine = await requireDocker();

if (!engine) {
  test.skip("function logs on the docker driver (no Docker engine)", () => {});
} else {
  let forge: ForgeProcess;
  const dir = tempDir("forge-obs-docker-");

  beforeAll(async () => {
    forge = await startForge({ env: { FORGE_DRIVER: "docker", FORGE_STEM_CELLS: "1" } });
    writeFileSync(
      join(dir, "index.ts"),
      `export default { fetch(req: Request) {
         const n = new URL(req.url).searchParams.get("n") ?? "0";
         console.log("docker-log", n);
         console.error("docker-err", n);
         return new Response("ok " + n);
       } };`,
    );
    const d = await cli(forge, ["deploy", dir, "--name", "talker"]);
    if (d.code !== 0) throw new Error(d.stdout + d.stderr);
  });
  afterAll(async () => {
    try {
      if (forge) await cli(forge, ["delete", "talker"]);
      await forge?.[Symbol.asyncDispose]();
    } finally {
      dir[Symbol.dispose]();
    }
  });

  describe("function logs on the docker driver", () => {
    test("a container's stdout and stderr are found with forge logs, tagged with the request id", async () => {
      const r = await forge.fn("talker", "/?n=1");
      expect(await r.text()).toBe("ok 1");
      const id = r.headers.get("x-forge-request-id") ?? "";
      const mine = await until(async () => {
        const out = await cli(forge, ["logs", "talker", "--json", "--request", id]);
        const lines = out.stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as { text: string; stream: string });
        return lines.length >= 2 ? lines : undefined;
      }, 15_000, "both lines of the request");
      expect(mine.map((l) => [l.stream, l.text]).sort()).toEqual([["stderr", "docker-err 1"], ["stdout", "docker-log 1"]]);
    });

    test("-f shows new lines as they come and ends cleanly on Ctrl-C", async () => {
      const poke = async (): Promise<void> => void (await (await forge.fn("talker", "/?n=followed")).text());
      expect(await followLogsUntil(forge, "talker", poke, "docker-log followed")).toBe(0);
    });
  });
}
