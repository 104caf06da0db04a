/**
 * forge end to end on the docker driver: a real `forge up` with FORGE_DRIVER=docker, the
 * real CLI, the real engine. Deploys (bun and Dockerfile), redeploy and rollback, isolation
 * inside an instance, OOM and crashes, and a kill -9 of forge followed by a restart. One
 * forge serves every check up to the kill. Skipped without an engine, failed under CI.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker } from "./_services.ts";

const engine = await requireDocker();
const examples = join(ROOT, "examples");

if (!engine) {
  test.skip("e2e on the docker driver (no Docker engine)", () => {});
} else {
  const { docker } = engine;
  const data = tempDir("forge-e2e-docker-");
  const fns = tempDir("forge-e2e-fns-");
  let forge: ForgeProcess;

  /** Containers of this forge (their instance folder lies in its data dir), running or not. */
  const containers = async () =>
    (await docker.listContainers({ all: true, filters: { label: ["dev.forge.managed=true"] } })).filter((c) =>
      (c.Labels?.["dev.forge.dir"] ?? "").startsWith(`${data}/`),
    );

  /** Writes a function folder under the temp dir and returns its path. */
  const fnDir = (name: string, source: string, config: Record<string, unknown> = {}): string => {
    const dir = join(fns, name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "index.ts"), source);
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ name, ...config }));
    return dir;
  };

  const deploy = async (dir: string, ...flags: string[]) => {
    const r = await cli(forge, ["deploy", dir, ...flags]);
    if (r.code !== 0) throw new Error(`deploy ${dir} failed:\n${r.stdout}\n${r.stderr}`);
    return r;
  };

  beforeAll(async () => {
    forge = await startForge({ dataDir: data, env: { FORGE_DRIVER: "docker", FORGE_STEM_CELLS: "1" } });
  });
  afterAll(async () => {
    try {
      if (forge) {
        for (const name of ["hello", "hono-app", "docker-app", "probe", "hog", "quitter"]) await cli(forge, ["delete", name]);
        await forge.stop();
      }
      // Whatever a failed test left: this forge's containers only.
      for (const c of await containers()) await docker.getContainer(c.Id).remove({ force: true }).catch(() => {});
    } finally {
      data[Symbol.dispose]();
      fns[Symbol.dispose]();
    }
  });

  describe("the docker driver end to end", () => {
    test("forge up says it runs docker and why", () => {
      expect(forge.output()).toContain("driver: docker (FORGE_DRIVER=docker");
    });

    test("hello: deploy builds forge/fn-hello:v1; subdomain and CLI invoke answer; redeploy and rollback", async () => {
      const d = await deploy(join(examples, "hello"));
      expect(d.stdout).toContain("[2/3] Building");
      expect(d.stdout).toContain("Successfully tagged forge/fn-hello:v1");
      expect(d.stdout).toContain(`Your function is live at: http://hello.localhost:${forge.port}`);
      expect(await (await forge.fn("hello", "/?name=Docker")).json()).toEqual({ message: "Hello, Docker!" });
      const inv = await cli(forge, ["invoke", "hello", "--data", '{"name":"CLI"}']);
      expect(inv.code).toBe(0);
      expect(JSON.parse(inv.stdout)).toEqual({ message: "Hello, CLI!" });

      const d2 = await cli(forge, ["deploy", join(examples, "hello"), "--env", "GREETING=Howdy", "--json"]);
      expect(JSON.parse(d2.stdout)).toMatchObject({ version: 2, image: "forge/fn-hello:v2" });
      expect(await (await forge.fn("hello", "/?name=v2")).json()).toEqual({ message: "Howdy, v2!" });
      const rb = await cli(forge, ["rollback", "hello", "--json"]);
      expect(JSON.parse(rb.stdout).version).toBe(1);
      expect(await (await forge.fn("hello", "/?name=back")).json()).toEqual({ message: "Hello, back!" });
      // Older versions' images stay for rollback.
      expect((await docker.getImage("forge/fn-hello:v2").inspect()).Id).toBeTruthy();
    }, 120_000);

    test("hono-app deploys and answers on its routes", async () => {
      await deploy(join(examples, "hono-app"));
      expect(await (await forge.fn("hono-app", "/hello/docker")).json()).toEqual({ message: "Hello, docker!" });
      const post = await forge.fn("hono-app", "/todos", { method: "POST", body: JSON.stringify({ title: "ship" }), headers: { "content-type": "application/json" } });
      expect(post.status).toBe(201);
    }, 60_000);

    test("docker-app (its own Dockerfile, FROM the runtime image) deploys and answers", async () => {
      const d = await deploy(join(examples, "docker-app"), "--min-warm", "1");
      expect(d.stdout).toContain("Successfully tagged forge/fn-docker-app:v1");
      const r = await forge.fn("docker-app", "/?name=Dockerfile");
      expect(r.status).toBe(200);
      expect(await r.json()).toMatchObject({ message: "Hello from a Dockerfile, Dockerfile!", uid: 1000 });
    }, 60_000);

    test("a Dockerfile that fails to build fails the deploy with its log; the active version keeps serving", async () => {
      const dir = join(fns, "docker-bad");
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, "forge.json"), JSON.stringify({ name: "docker-app", runtime: "docker" }));
      writeFileSync(join(dir, "Dockerfile"), "ARG FORGE_RUNTIME_IMAGE\nFROM ${FORGE_RUNTIME_IMAGE}\nRUN /bin/does-not-exist\n");
      const r = await cli(forge, ["deploy", dir]);
      expect(r.code).toBe(1);
      expect(r.stdout + r.stderr).toContain("building the image of docker-app v2 failed");
      expect(r.stdout + r.stderr).toContain("hint:");
      expect((await forge.fn("docker-app", "/")).status).toBe(200);
    }, 60_000);

    test("inside an instance: non-root, read-only root, no view of forge's data or other functions", async () => {
      await deploy(
        fnDir(
          "probe",
          `import { existsSync, readdirSync, writeFileSync } from "node:fs";
           export default { fetch() {
             let write = "written";
             try { writeFileSync("/x", "y"); } catch (e) { write = (e as { code?: string }).code ?? "error"; }
             const list = (p: string) => { try { return readdirSync(p).sort(); } catch { return null; } };
             return Response.json({ uid: process.getuid?.(), gid: process.getgid?.(), write,
               root: list("/"), run: list("/run"), forge: list("/run/forge"), app: list("/app"),
               dataDir: existsSync(process.env.FORGE_DATA ?? "/nonexistent") });
           } };`,
        ),
        "--env",
        `FORGE_DATA=${data}`,
      );
      const seen = (await (await forge.fn("probe", "/")).json()) as Record<string, unknown>;
      expect(seen.uid).toBe(1000);
      expect(seen.gid).toBe(1000);
      expect(["EROFS", "EACCES"]).toContain(seen.write as string);
      expect(seen.dataDir).toBe(false);
      expect(seen.run).toEqual(["forge"]);
      // Its folder holds its own socket (and at most its own bundle, or its copy of its own folder, fn/); /app at most its own bundle.
      for (const entry of seen.forge as string[]) expect(["s.sock", "fn.mjs", "fn"]).toContain(entry);
      for (const entry of (seen.app as string[] | null) ?? []) expect(entry).toBe("bundle.mjs");
      expect(seen.root).not.toContain("functions");
      expect(JSON.stringify(seen)).not.toContain("hello");
    }, 60_000);

    test("a function over its memory limit is killed: 502, and forge and the others keep serving", async () => {
      await deploy(
        fnDir(
          "hog",
          `const keep: Uint8Array[] = [];
           export default { fetch(req: Request) {
             if (new URL(req.url).pathname === "/eat") for (;;) keep.push(new Uint8Array(8 << 20).fill(1));
             return new Response("still here");
           } };`,
          { memoryMb: 64 },
        ),
      );
      expect(await (await forge.fn("hog", "/")).text()).toBe("still here");
      const eaten = await forge.fn("hog", "/eat");
      expect(eaten.status).toBe(502);
      expect(((await eaten.json()) as { error: { code: string } }).error.code).toBe("instance_crashed");
      expect((await fetch(`${forge.url}/healthz`)).status).toBe(200);
      expect(await (await forge.fn("hello", "/?name=after")).json()).toEqual({ message: "Hello, after!" });
      expect(await (await forge.fn("hog", "/")).text()).toBe("still here");
    }, 60_000);

    test("a function that exits gives 502 and the next request is served", async () => {
      await deploy(
        fnDir(
          "quitter",
          `export default { fetch(req: Request) {
             if (new URL(req.url).pathname === "/quit") process.exit(9);
             return new Response("serving");
           } };`,
        ),
      );
      expect(await (await forge.fn("quitter", "/")).text()).toBe("serving");
      expect((await forge.fn("quitter", "/quit")).status).toBe(502);
      expect(await (await forge.fn("quitter", "/")).text()).toBe("serving");
      // The crashed container does not linger.
      await until(async () => (await containers()).every((c) => c.State === "running"), 10_000, "exited containers removed");
    }, 60_000);

    test("after kill -9 of forge and a restart: nothing exited or orphaned is left, and the functions answer", async () => {
      const before = await containers();
      const dockerApp = before.find((c) => c.Labels?.["dev.forge.function"] === "docker-app" && c.Labels?.["dev.forge.role"] === "instance");
      expect(dockerApp).toBeDefined();
      await forge.stop("SIGKILL");
      // Killed: its containers are still there.
      expect((await containers()).length).toBe(before.length);

      forge = await startForge({ dataDir: data, env: { FORGE_DRIVER: "docker", FORGE_STEM_CELLS: "1" } });
      expect(forge.output()).toMatch(/containers of an earlier run: 1 instances adopted, \d+ containers removed/);
      expect(await (await forge.fn("hello", "/?name=again")).json()).toEqual({ message: "Hello, again!" });
      expect((await forge.fn("docker-app", "/")).status).toBe(200);
      expect(await (await forge.fn("hono-app", "/hello/again")).json()).toEqual({ message: "Hello, again!" });

      // A stem cell refilling may be between create and start for a moment: wait for that.
      const after = await until(async () => {
        const now = await containers();
        return now.every((c) => c.State === "running") ? now : undefined;
      }, 10_000, "every container of forge running");
      expect(after.filter((c) => c.State === "exited" || c.State === "dead")).toEqual([]);
      // The one instance that belongs to an active version (docker-app, minWarm 1) was adopted;
      // every other container of the killed forge is gone.
      const survivors = before.filter((b) => after.some((a) => a.Id === b.Id)).map((c) => c.Id);
      expect(survivors.sort()).toEqual(before.filter((c) => c.Labels?.["dev.forge.instance"] === dockerApp?.Labels?.["dev.forge.instance"]).map((c) => c.Id).sort());
    }, 120_000);

    test("forge up builds a missing runtime image itself and says so", async () => {
      const image = `forge-test/runtime-bun:${crypto.randomUUID().slice(0, 8)}`;
      using dir = tempDir("forge-e2e-image-");
      try {
        await using other = await startForge({ dataDir: dir, env: { FORGE_DRIVER: "docker", FORGE_STEM_CELLS: "0", FORGE_RUNTIME_IMAGE: image } });
        expect(other.output()).toContain(`built the runtime image ${image} (missing)`);
      } finally {
        await docker.getImage(image).remove({ force: true }).catch(() => {});
      }
    }, 60_000);
  });
}
