/**
 * What survives a restart, and what a function's failures look like from outside:
 * a throw is a 500 JSON error, a crash a 502 and the next request gets a fresh instance.
 */
import { describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir } from "./_helpers.ts";

describe("restart", () => {
  test("functions, versions and the API key survive a restart", async () => {
    using data = tempDir("forge-restart-");
    const first = await startForge({ dataDir: data });
    try {
      expect((await cli(first, ["deploy", join(ROOT, "examples/hello")])).code).toBe(0);
      expect((await cli(first, ["deploy", join(ROOT, "examples/hello"), "--env", "GREETING=Hi"])).code).toBe(0);
    } finally {
      await first.stop();
    }
    await using second = await startForge({ dataDir: data });
    expect(second.apiKey).toBe(first.apiKey);
    expect(second.output()).not.toContain("generated");
    const r = await second.fn("hello", "/?name=again");
    expect(await r.json()).toEqual({ message: "Hi, again!" });
    const versions = JSON.parse((await cli(second, ["versions", "hello", "--json"])).stdout) as { version: number; active: boolean }[];
    expect(versions.map((v) => [v.version, v.active])).toEqual([[2, true], [1, false]]);
  });
});

describe("function failures", () => {
  test("a throw gives 500 JSON; a crash gives 502 and the next request is served by a fresh instance", async () => {
    using dir = tempDir("forge-fn-");
    writeFileSync(
      join(dir, "index.ts"),
      `export default { async fetch(req: Request) {
         const p = new URL(req.url).pathname;
         if (p === "/throw") throw new Error("boom");
         if (p === "/crash") process.exit(7);
         if (p === "/slow") await Bun.sleep(3000);
         return Response.json({ pid: process.pid });
       } };`,
    );
    await using forge = await startForge();
    expect((await cli(forge, ["deploy", dir, "--name", "fragile", "--timeout", "300"])).code).toBe(0);

    const ok1 = (await (await forge.fn("fragile", "/")).json()) as { pid: number };
    const thrown = await forge.fn("fragile", "/throw");
    expect(thrown.status).toBe(500);
    const body = (await thrown.json()) as { error: { message: string } };
    expect(body.error.message).toContain("boom");

    const crashed = await forge.fn("fragile", "/crash");
    expect(crashed.status).toBe(502);
    const err = (await crashed.json()) as { error: { code: string; hint: string } };
    expect(err.error.code).toBe("instance_crashed");
    expect(err.error.hint).toBeTruthy();

    const ok2 = await forge.fn("fragile", "/");
    expect(ok2.status).toBe(200);
    expect(((await ok2.json()) as { pid: number }).pid).not.toBe(ok1.pid);

    const slow = await forge.fn("fragile", "/slow");
    expect(slow.status).toBe(504);
    expect(((await slow.json()) as { error: { code: string; hint: string } }).error.code).toBe("function_timeout");
    expect((await forge.fn("fragile", "/")).status).toBe(200);
  });
});

describe("the CLI says what went wrong and how to fix it", () => {
  test("unreachable forge: exit 1 with a hint", async () => {
    const r = await cli({ url: "http://127.0.0.1:9", apiKey: "x" }, ["list"]);
    expect(r.code).toBe(1);
    expect(r.stderr + r.stdout).toContain("cannot reach forge");
    expect(r.stderr + r.stdout).toContain("hint:");
  });

  test("forge up on a port already in use: exit 1 naming the port, with a hint", async () => {
    using dataDir = tempDir();
    const busy = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const proc = Bun.spawn([process.execPath, join(ROOT, "src/cli/main.ts"), "up", "--port", String(busy.port)], {
        env: { PATH: process.env.PATH ?? "", FORGE_DATA_DIR: dataDir, FORGE_DRIVER: "process", FORGE_STEM_CELLS: "0", NO_COLOR: "1" },
        stdout: "pipe",
        stderr: "pipe",
      });
      const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
      expect(code).toBe(1);
      expect(out + err).toContain(`cannot listen on 127.0.0.1:${busy.port}`);
      expect(out + err).toContain("FORGE_PORT");
    } finally {
      busy.stop(true);
    }
  });

  test("malformed forge.json is refused before upload", async () => {
    using dir = tempDir();
    mkdirSync(join(dir, "x"));
    writeFileSync(join(dir, "x/index.ts"), "export default () => new Response('x')");
    writeFileSync(join(dir, "x/forge.json"), "{ nope");
    const r = await cli({ url: "http://127.0.0.1:9", apiKey: "x" }, ["deploy", join(dir, "x")]);
    expect(r.code).toBe(1);
    expect(r.stderr + r.stdout).toContain("forge.json is not valid JSON");
  });
});
