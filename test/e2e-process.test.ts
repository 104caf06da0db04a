/**
 * The foundation end to end on the process driver: a real `forge up` on port 0, the real
 * CLI, the examples. Deploy, invoke by subdomain and CLI, versions, rollback, restart.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { cli, ROOT, startForge, type ForgeProcess } from "./_helpers.ts";

const examples = join(ROOT, "examples");
let forge: ForgeProcess;

beforeAll(async () => {
  forge = await startForge();
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
});

describe("deploy and invoke on the process driver", () => {
  test("forge up prints where it listens and the API key", () => {
    expect(forge.output()).toContain("forge listening on http://127.0.0.1:");
    expect(forge.apiKey).toMatch(/^forge_/);
    expect(forge.output()).toContain("driver: process");
  });

  test("hello: deploy prints the steps and the URL; subdomain and CLI invoke give the greeting", async () => {
    const d = await cli(forge, ["deploy", join(examples, "hello")]);
    expect(d.stderr).toBe("");
    expect(d.code).toBe(0);
    expect(d.stdout).toContain("[1/3] Packaging");
    expect(d.stdout).toContain("[2/3] Building");
    expect(d.stdout).toContain("[3/3] Starting");
    expect(d.stdout).toContain(`Your function is live at: http://hello.localhost:${forge.port}`);

    const r = await forge.fn("hello", "/?name=World");
    expect(r.status).toBe(200);
    expect(await r.json()).toEqual({ message: "Hello, World!" });
    expect(r.headers.get("x-forge-request-id")).toBeTruthy();
    expect(["warm", "cell", "cold"]).toContain(r.headers.get("x-forge-start") ?? "");

    const inv = await cli(forge, ["invoke", "hello", "--data", '{"name":"World"}']);
    expect(inv.code).toBe(0);
    expect(JSON.parse(inv.stdout)).toEqual({ message: "Hello, World!" });

    const byPath = await fetch(`${forge.url}/fn/hello/?name=Path`);
    expect(await byPath.json()).toEqual({ message: "Hello, Path!" });
  });

  test("a second deploy makes version 2; rollback serves version 1 again", async () => {
    const d2 = await cli(forge, ["deploy", join(examples, "hello"), "--env", "GREETING=Howdy", "--env", "OTHER=1", "--json"]);
    expect(d2.code).toBe(0);
    expect(JSON.parse(d2.stdout).version).toBe(2);
    const info = JSON.parse((await cli(forge, ["info", "hello", "--json"])).stdout) as { config: { env: Record<string, string> } };
    expect(info.config.env).toEqual({ GREETING: "Howdy", OTHER: "1" });
    expect(await (await forge.fn("hello", "/?name=World")).json()).toEqual({ message: "Howdy, World!" });

    const versions = await cli(forge, ["versions", "hello", "--json"]);
    const list = JSON.parse(versions.stdout) as { version: number; active: boolean }[];
    expect(list.map((v) => [v.version, v.active])).toEqual([[2, true], [1, false]]);

    const rb = await cli(forge, ["rollback", "hello", "--json"]);
    expect(rb.code).toBe(0);
    expect(JSON.parse(rb.stdout).version).toBe(1);
    expect(await (await forge.fn("hello", "/?name=World")).json()).toEqual({ message: "Hello, World!" });
  });

  test("hono-app (imports hono) deploys and answers on two routes", async () => {
    const d = await cli(forge, ["deploy", join(examples, "hono-app")]);
    expect(d.code).toBe(0);
    expect(await (await forge.fn("hono-app", "/hello/forge")).json()).toEqual({ message: "Hello, forge!" });
    const post = await forge.fn("hono-app", "/todos", { method: "POST", body: JSON.stringify({ title: "ship" }), headers: { "content-type": "application/json" } });
    expect(post.status).toBe(201);
    expect(await (await forge.fn("hono-app", "/todos")).json()).toEqual([{ id: 1, title: "ship" }]);
  });

  test("echo passes method, path, query, headers and body unchanged", async () => {
    expect((await cli(forge, ["deploy", join(examples, "echo")])).code).toBe(0);
    const r = await forge.fn("echo", "/a/b?x=1&y=two", { method: "PUT", body: "raw body", headers: { "x-custom": "v" } });
    const e = (await r.json()) as { method: string; path: string; query: Record<string, string>; headers: Record<string, string>; body: string };
    expect(e.method).toBe("PUT");
    expect(e.path).toBe("/a/b");
    expect(e.query).toEqual({ x: "1", y: "two" });
    expect(e.headers["x-custom"]).toBe("v");
    expect(e.headers["x-forge-request-id"]).toBe(r.headers.get("x-forge-request-id") ?? "missing");
    expect(e.body).toBe("raw body");
  });

  test("calculator (a Lambda handler) adds", async () => {
    expect((await cli(forge, ["deploy", join(examples, "calculator")])).code).toBe(0);
    const r = await forge.fn("calculator", "/?op=add&a=2&b=3");
    expect(r.status).toBe(200);
    expect(((await r.json()) as { result: number }).result).toBe(5);
  });

  test("list and info show the functions", async () => {
    const l = await cli(forge, ["list", "--json"]);
    const names = (JSON.parse(l.stdout) as { name: string }[]).map((f) => f.name).sort();
    expect(names).toEqual(["calculator", "echo", "hello", "hono-app"]);
    const i = await cli(forge, ["info", "hello", "--json"]);
    const info = JSON.parse(i.stdout) as { version: number; pool: { instances: unknown[]; starts: Record<string, number> } };
    expect(info.version).toBe(1);
    expect(info.pool.instances.length).toBeGreaterThanOrEqual(1);
  });
});
