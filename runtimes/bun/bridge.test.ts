import { describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitReady } from "../../src/pool/instance-client.ts";
import { TestWebSocket, upgradeRequestHeaders } from "../../test/_ws-client.ts";

const BRIDGE = join(import.meta.dir, "bridge.ts");

/** The bridge as the docker driver runs it, in front of `upstreamPort` (a server of the test's own). */
async function startBridge(upstreamPort: number) {
  const dir = await mkdtemp(join(tmpdir(), "forge-bridge-"));
  const socketPath = join(dir, "s.sock");
  const token = crypto.randomUUID();
  const proc = Bun.spawn([process.execPath, "--no-install", "--no-env-file", BRIDGE], {
    env: { PATH: "/usr/bin:/bin", FORGE_SOCKET: socketPath, FORGE_CONTROL_TOKEN: token, FORGE_UPSTREAM_PORT: String(upstreamPort) },
    stdout: "inherit",
    stderr: "inherit",
  });
  const bridge = {
    socketPath,
    request: (path: string, init: RequestInit = {}) => fetch(`http://fn.localhost${path}`, { ...init, unix: socketPath }),
    async [Symbol.asyncDispose]() {
      proc.kill("SIGKILL");
      await proc.exited;
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitReady({ socketPath }, token, { exited: proc.exited, timeoutMs: 10_000 });
  } catch (err) {
    await bridge[Symbol.asyncDispose]();
    throw err;
  }
  return bridge;
}

describe("bridge: WebSockets to a docker function's own server", () => {
  test("an upgrade is relayed: headers and subprotocol, text and binary both ways, the close code back", async () => {
    using upstream = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(request, server) {
        const url = new URL(request.url);
        if (url.pathname !== "/ws") return new Response("plain " + request.headers.get("x-forge-client-ip"));
        const data = { ip: request.headers.get("x-forge-client-ip"), query: url.search };
        return server.upgrade(request, { data, headers: { "sec-websocket-protocol": "echo" } }) ? undefined : new Response("no", { status: 400 });
      },
      websocket: {
        data: {} as { ip: string | null; query: string },
        open(ws) {
          ws.send(`hello ${ws.data.ip} ${ws.data.query}`);
        },
        message(ws, message) {
          if (message === "bye") ws.close(4001, "server says bye");
          else ws.send(message);
        },
      },
    });
    await using bridge = await startBridge(upstream.port as number);
    expect(await (await bridge.request("/", { headers: { "x-forge-client-ip": "192.0.2.1" } })).text()).toBe("plain 192.0.2.1");

    await using ws = await TestWebSocket.open("ws://fn.localhost/ws?a=1", {
      unix: bridge.socketPath,
      protocols: ["echo", "other"],
      headers: { "x-forge-client-ip": "192.0.2.1" },
    });
    expect(ws.protocol).toBe("echo");
    expect(await ws.next()).toBe("hello 192.0.2.1 ?a=1");
    for (let i = 0; i < 200; i++) expect(await ws.roundTrip(`m${i}`)).toBe(`m${i}`);
    const bytes = new Uint8Array([0, 1, 2, 254, 255]);
    expect(new Uint8Array((await ws.roundTrip(bytes)) as ArrayBuffer)).toEqual(bytes);
    ws.send("bye");
    expect(await ws.closed).toMatchObject({ code: 4001, reason: "server says bye" });
  });

  test("an upgrade the function's server refuses is a 502 that says so", async () => {
    using upstream = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("no websockets here", { status: 404 }) });
    await using bridge = await startBridge(upstream.port as number);
    const refused = await bridge.request("/ws", { headers: upgradeRequestHeaders() });
    expect(refused.status).toBe(502);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe("websocket_refused");
  });
});
