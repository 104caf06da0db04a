/**
 * Runtime images built from this machine: idempotence, what the bun image holds, and a
 * forge/postgres container that initializes once and serves. Needs the Docker engine
 * (skipped without one, failed under CI); the postgres build itself (~1 min) happens here
 * only when .ci/services.sh has not built the image already.
 */
import { describe, expect, test } from "bun:test";
import { SQL } from "bun";
import { Readable } from "node:stream";
import tar from "tar-stream";
import { cli, until } from "../../test/_helpers.ts";
import { requireDocker } from "../../test/_services.ts";
import { loadConfig } from "../config.ts";
import { buildRuntimeImage, runtimeImageState } from "./runtime-images.ts";

const engine = await requireDocker();

describe("forge images build (CLI)", () => {
  test("an unknown image name is a 400 with a hint", async () => {
    const r = await cli(undefined, ["images", "build", "nope"]);
    expect(r.code).toBe(1);
    expect(r.stdout + r.stderr).toContain('unknown runtime image "nope"');
    expect(r.stdout + r.stderr).toContain("hint: use one of bun, node, postgres, all");
  });

  test.skipIf(!engine)("a present, current image is skipped", async () => {
    const r = await cli(undefined, ["images", "build", "bun", "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([expect.objectContaining({ image: loadConfig().runtimeImage, built: false, reason: "present" })]);
  });
});

if (engine) {
  const { docker } = engine;

  describe("runtime images", () => {
    test("bun: built when missing, skipped when current, rebuilt when forced; runs as uid 1000 with /tmp 1777", async () => {
      const image = `forge-test/runtime-bun:${crypto.randomUUID().slice(0, 8)}`;
      try {
        const lines: string[] = [];
        expect(await buildRuntimeImage(docker, "bun", { image, onLog: (l) => lines.push(l) })).toMatchObject({ image, built: true, reason: "missing" });
        expect(lines.join("\n")).toContain("Successfully tagged " + image);
        expect(await runtimeImageState(docker, "bun", image)).toBe("current");
        expect(await buildRuntimeImage(docker, "bun", { image })).toMatchObject({ built: false, reason: "present" });
        expect(await buildRuntimeImage(docker, "bun", { image, force: true })).toMatchObject({ built: true, reason: "forced" });

        const container = await docker.createContainer({
          Image: image,
          Cmd: ["/usr/local/bin/bun", "-e", `const fs = require("fs"); console.log(JSON.stringify({ uid: process.getuid(), tmp: (fs.statSync("/tmp").mode & 0o7777).toString(8), forge: fs.readdirSync("/forge").sort() }))`],
        });
        try {
          await container.start();
          expect((await container.wait()).StatusCode).toBe(0);
          const out = (await container.logs({ stdout: true, stderr: false })).toString("utf8");
          expect(JSON.parse(out.slice(out.indexOf("{")))).toEqual({ uid: 1000, tmp: "1777", forge: ["bridge.ts", "shim.ts"] });
        } finally {
          await container.remove({ force: true });
        }
      } finally {
        await docker.getImage(image).remove({ force: true }).catch(() => {});
      }
    }, 120_000);

    test("an image forge did not build is used as is", async () => {
      const image = `forge-test/foreign:${crypto.randomUUID().slice(0, 8)}`;
      const pack = tar.pack();
      pack.entry({ name: "hello.txt" }, "not forge's");
      pack.finalize();
      const [repo, tag] = image.split(":");
      const stream = await docker.importImage(Readable.from(pack as AsyncIterable<Buffer>) as unknown as NodeJS.ReadableStream, { repo, tag } as Record<string, string>);
      for await (const _ of stream as AsyncIterable<unknown>) {
        // drain the import's progress
      }
      try {
        expect(await runtimeImageState(docker, "bun", image)).toBe("foreign");
        expect(await buildRuntimeImage(docker, "bun", { image })).toMatchObject({ built: false, reason: "present (not built by forge: used as is)" });
      } finally {
        await docker.getImage(image).remove({ force: true }).catch(() => {});
      }
    }, 60_000);

    test("postgres: initializes user, password and database once, serves on 5432, stops fast", async () => {
      const image = loadConfig().postgresImage;
      await buildRuntimeImage(docker, "postgres", { image });
      const port = (() => {
        const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
        const p = s.port;
        s.stop(true);
        return p;
      })();
      const container = await docker.createContainer({
        Image: image,
        Env: ["POSTGRES_USER=app", "POSTGRES_PASSWORD=s3cret'\"", "POSTGRES_DB=my-db"],
        ExposedPorts: { "5432/tcp": {} },
        HostConfig: { PortBindings: { "5432/tcp": [{ HostIp: "127.0.0.1", HostPort: String(port) }] } },
      });
      try {
        await container.start();
        const url = `postgres://app:${encodeURIComponent("s3cret'\"")}@127.0.0.1:${port}/my-db`;
        const row = await until(
          async () => {
            const sql = new SQL(url, { max: 1, connectionTimeout: 2 });
            try {
              const [r] = (await sql`select current_user as user, current_database() as db`) as { user: string; db: string }[];
              return r;
            } catch {
              return undefined;
            } finally {
              await sql.close();
            }
          },
          30_000,
          "postgres to accept connections",
        );
        expect(row).toEqual({ user: "app", db: "my-db" });
        const wrong = new SQL(`postgres://app:wrong@127.0.0.1:${port}/my-db`, { max: 1 });
        await expect(wrong`select 1`).rejects.toThrow();
        await wrong.close();
        await container.stop({ t: 10 });
        expect((await container.inspect()).State.ExitCode).toBe(0);
      } finally {
        await container.remove({ force: true });
      }
    }, 240_000);

    test("postgres: a missing password stops the container with a message", async () => {
      const container = await docker.createContainer({ Image: loadConfig().postgresImage, Env: ["POSTGRES_USER=app"] });
      try {
        await container.start();
        expect((await container.wait()).StatusCode).toBe(1);
        expect((await container.logs({ stdout: true, stderr: true })).toString("utf8")).toContain("POSTGRES_PASSWORD is not set");
      } finally {
        await container.remove({ force: true });
      }
    }, 60_000);
  });
}
