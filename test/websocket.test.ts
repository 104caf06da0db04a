/**
 * WebSockets to functions and the client's address, end to end through the gateway on both
 * drivers: a Bun-style and a Hono-style echo function round-trip 1,000 messages through the
 * subdomain and /fn/<name>/, a new version closes them with 1001, the upgrade is recorded;
 * a Lambda handler sees the client's address, and a spoofed X-Forwarded-For is not taken for it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker } from "./_services.ts";
import { TestWebSocket } from "./_ws-client.ts";

const fixtures = join(ROOT, "test", "fixtures");
const engine = await requireDocker();
const drivers = engine ? ["process", "docker"] : ["process"];
if (!engine) test.skip("WebSockets on the docker driver (no Docker engine)", () => {});

for (const driver of drivers) {
  describe(`WebSockets through the gateway (${driver} driver)`, () => {
    let forge: ForgeProcess;
    beforeAll(async () => {
      forge = await startForge({ env: { FORGE_DRIVER: driver, FORGE_STEM_CELLS: "1" } });
      for (const name of ["ws-bun", "ws-hono"]) {
        const r = await cli(forge, ["deploy", join(fixtures, name), "--name", name]);
        if (r.code !== 0) throw new Error(`deploy ${name}:\n${r.stdout}\n${r.stderr}`);
      }
    });
    afterAll(async () => {
      await forge?.[Symbol.asyncDispose]();
    });

    const open = (name: string, path = "/ws", host = `${name}.localhost:${forge.port}`): Promise<TestWebSocket> =>
      TestWebSocket.open(`ws://127.0.0.1:${forge.port}${path}`, { headers: { host } });

    for (const name of ["ws-bun", "ws-hono"]) {
      test(`${name}: 1,000 messages round-trip through the subdomain, text and binary`, async () => {
        await using ws = await open(name);
        for (let i = 0; i < 1000; i++) {
          if (i % 10 === 9) {
            const bytes = new Uint8Array([i & 255, (i >> 8) & 255, 0, 255]);
            expect(new Uint8Array((await ws.roundTrip(bytes)) as ArrayBuffer)).toEqual(bytes);
          } else expect(await ws.roundTrip(`message ${i}`)).toBe(`message ${i}`);
        }
      });

      test(`${name}: /fn/${name}/ws upgrades too`, async () => {
        await using ws = await open(name, `/fn/${name}/ws`, `127.0.0.1:${forge.port}`);
        expect(await ws.roundTrip("via the path")).toBe("via the path");
      });
    }

    test("the upgrade is recorded (status 101) once the WebSocket closes", async () => {
      const ws = await open("ws-bun");
      expect(await ws.roundTrip("x")).toBe("x");
      await ws.close();
      await until(async () => {
        const r = (await (await forge.api("/v1/functions/ws-bun/invocations?status=101")).json()) as { invocations: unknown[] };
        return r.invocations.length > 0 || undefined;
      }, 10_000, "the 101 record");
    });

    test("a function that refuses the upgrade answers as it likes, and the connection closes", async () => {
      const res = await fetch(`http://127.0.0.1:${forge.port}/nope`, {
        headers: { host: `ws-bun.localhost:${forge.port}`, connection: "upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" },
      });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("ws-bun");
    });

    test("an open WebSocket takes no request slot: a function of concurrency 1 still serves requests", async () => {
      const r = await cli(forge, ["deploy", join(fixtures, "ws-bun"), "--name", "ws-one", "--concurrency", "1", "--max-instances", "1"]);
      expect(r.code).toBe(0);
      await using ws = await open("ws-one");
      expect(await ws.roundTrip("held")).toBe("held");
      const res = await forge.fn("ws-one", "/");
      expect(await res.text()).toBe("ws-bun");
      expect(await ws.roundTrip("still open")).toBe("still open");
    });

    test("a new version closes open WebSockets cleanly (1001), and new ones reach it", async () => {
      const ws = await open("ws-hono");
      expect(await ws.roundTrip("before")).toBe("before");
      const r = await cli(forge, ["deploy", join(fixtures, "ws-hono"), "--name", "ws-hono", "--env", "V=2"]);
      expect(r.code).toBe(0);
      const closed = await ws.closed;
      expect(closed.code).toBe(1001);
      await using again = await open("ws-hono");
      expect(await again.roundTrip("after")).toBe("after");
    });
  });
}

describe("the client's address", () => {
  const dir = tempDir("forge-ip-");
  let forge: ForgeProcess;
  let proxied: ForgeProcess;
  beforeAll(async () => {
    writeFileSync(
      join(dir, "index.mjs"),
      `export const handler = async (event) => ({ statusCode: 200, body: JSON.stringify({ sourceIp: event.requestContext.http.sourceIp, xff: event.headers["x-forwarded-for"] }) });`,
    );
    [forge, proxied] = await Promise.all([startForge(), startForge({ env: { FORGE_TRUSTED_PROXIES: "127.0.0.0/8, ::1" } })]);
    for (const f of [forge, proxied]) expect((await cli(f, ["deploy", dir, "--name", "ip"])).code).toBe(0);
  });
  afterAll(async () => {
    await Promise.all([forge?.[Symbol.asyncDispose](), proxied?.[Symbol.asyncDispose]()]);
    dir[Symbol.dispose]();
  });

  test("a Lambda handler sees the client's address; a spoofed X-Forwarded-For from an untrusted peer is not passed on as the client's", async () => {
    const res = await forge.fn("ip", "/", { headers: { "x-forwarded-for": "6.6.6.6" } });
    expect(await res.json()).toEqual({ sourceIp: "127.0.0.1", xff: "127.0.0.1" });
  });

  test("behind a trusted proxy (FORGE_TRUSTED_PROXIES) the address it forwarded for is the client's", async () => {
    const res = await proxied.fn("ip", "/", { headers: { "x-forwarded-for": "6.6.6.6, 10.1.2.3" } });
    // 10.1.2.3 is not trusted here: it is the rightmost address no trusted proxy added.
    expect(await res.json()).toEqual({ sourceIp: "10.1.2.3", xff: "6.6.6.6, 10.1.2.3, 127.0.0.1" });
  });
});
