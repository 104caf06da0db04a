/**
 * The load generator against real servers on port 0: what it counts matches what the
 * server saw, connections are kept alive (one per worker), and requests that get no
 * response are counted by kind. No timings are asserted.
 */
import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { runLoad, runLoadInWorker } from "../src/bench/load.ts";
import { tempDir } from "./_helpers.ts";

interface Seen {
  requests: number;
  /** Client ports: one a connection. */
  ports: Set<number>;
  hosts: Set<string>;
  bodies: Set<string>;
}

function countingServer(options: { unix?: string } = {}): { url: string; seen: Seen } & Disposable {
  const seen: Seen = { requests: 0, ports: new Set(), hosts: new Set(), bodies: new Set() };
  const server = Bun.serve({
    ...(options.unix ? { unix: options.unix } : { port: 0, hostname: "127.0.0.1" }),
    async fetch(req, srv) {
      seen.requests++;
      const ip = srv.requestIP(req);
      if (ip) seen.ports.add(ip.port);
      seen.hosts.add(req.headers.get("host") ?? "");
      if (req.method === "POST") seen.bodies.add(await req.text());
      const path = new URL(req.url).pathname;
      if (path === "/missing") return new Response("no", { status: 404 });
      if (path === "/stream") {
        // chunked: two chunks and the end
        const enc = new TextEncoder();
        return new Response(
          new ReadableStream({
            start(c) {
              c.enqueue(enc.encode("x".repeat(3000)));
              c.enqueue(enc.encode("y"));
              c.close();
            },
          }),
        );
      }
      return new Response("ok");
    },
  });
  const url = options.unix ? "http://local/" : `http://127.0.0.1:${server.port}/`;
  return { url, seen, [Symbol.dispose]: () => void server.stop(true) };
}

/** A raw TCP server that misbehaves: closes on the request, or never answers. */
function rawServer(behaviour: "close" | "silent" | "half"): { port: number } & Disposable {
  const server = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      data(socket) {
        if (behaviour === "close") socket.end();
        if (behaviour === "half") {
          socket.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a part");
          socket.end();
        }
      },
    },
  });
  return { port: server.port, [Symbol.dispose]: () => server.stop(true) };
}

function freePort(): number {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  return port;
}

describe("runLoad", () => {
  test("a request count: every request reached the server, once, over one kept-alive connection per worker", async () => {
    using server = countingServer();
    const r = await runLoad({ url: server.url, concurrency: 16, requests: 3000 });
    expect(server.seen.requests).toBe(3000);
    expect(r.requests).toBe(3000);
    expect(r.ok).toBe(3000);
    expect(r.latency.count).toBe(3000);
    expect(r.statuses).toEqual({ "200": 3000 });
    expect(r.errors.total).toBe(0);
    expect(r.connections).toBe(16);
    expect(server.seen.ports.size).toBe(16);
    expect(r.rps).toBeGreaterThan(0);
  });

  test("more workers than Bun's fetch keeps alive (64): still one connection each", async () => {
    using server = countingServer();
    const r = await runLoad({ url: server.url, concurrency: 100, requests: 2000 });
    expect(server.seen.requests).toBe(2000);
    expect(server.seen.ports.size).toBe(100);
    expect(r.connections).toBe(100);
  });

  test("a duration: stops issuing, and what it counted is what the server saw", async () => {
    using server = countingServer();
    const r = await runLoad({ url: server.url, concurrency: 4, durationMs: 200 });
    expect(r.requests).toBeGreaterThan(0);
    expect(server.seen.requests).toBe(r.requests);
    expect(r.ok).toBe(r.requests);
  });

  test("Host header, method and body are sent as given; chunked responses are read whole", async () => {
    using server = countingServer();
    const r = await runLoad({ url: server.url, headers: { Host: "greet.localhost:8080" }, method: "post", body: '{"a":1}', concurrency: 2, requests: 10 });
    expect(r.ok).toBe(10);
    expect([...server.seen.hosts]).toEqual(["greet.localhost:8080"]);
    expect([...server.seen.bodies]).toEqual(['{"a":1}']);
    const s = await runLoad({ url: `${server.url}stream`, concurrency: 3, requests: 300 });
    expect(s.ok).toBe(300);
    expect(s.connections).toBe(3);
  });

  test("a body larger than the socket buffer is sent whole, across drains", async () => {
    const lengths: number[] = [];
    using server = (() => {
      const srv = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: async (req) => (lengths.push((await req.arrayBuffer()).byteLength), new Response("ok")) });
      return { port: srv.port, [Symbol.dispose]: () => void srv.stop(true) };
    })();
    const body = new Uint8Array(4 * 1024 * 1024).fill(97);
    const r = await runLoad({ url: `http://127.0.0.1:${server.port}/`, method: "PUT", body, concurrency: 2, requests: 4 });
    expect(r.ok).toBe(4);
    expect(lengths).toEqual([body.byteLength, body.byteLength, body.byteLength, body.byteLength]);
  });

  test("status errors are counted by status; the connection stays in use", async () => {
    using server = countingServer();
    const r = await runLoad({ url: `${server.url}missing`, concurrency: 2, requests: 20 });
    expect(r.errors.total).toBe(20);
    expect(r.errors.byStatus).toEqual({ "404": 20 });
    expect(r.ok).toBe(0);
    expect(r.latency.count).toBe(20);
    expect(r.connections).toBe(2);
  });

  test("errors by kind: connect (nothing listens), reset (the server closes the socket), timeout", async () => {
    const refused = await runLoad({ url: `http://127.0.0.1:${freePort()}/`, concurrency: 2, requests: 10 });
    expect(refused.errors.byKind.connect).toBe(10);
    expect(refused.errors.total).toBe(10);
    expect(refused.latency.count).toBe(0);
    expect(refused.errors.samples.connect).toContain("cannot connect");

    using closing = rawServer("close");
    const reset = await runLoad({ url: `http://127.0.0.1:${closing.port}/`, concurrency: 2, requests: 10 });
    expect(reset.errors.byKind.reset).toBe(10);
    expect(reset.connections).toBe(10);

    using half = rawServer("half");
    const truncated = await runLoad({ url: `http://127.0.0.1:${half.port}/`, concurrency: 1, requests: 3 });
    expect(truncated.errors.byKind.reset).toBe(3);

    using silent = rawServer("silent");
    const timeout = await runLoad({ url: `http://127.0.0.1:${silent.port}/`, concurrency: 2, requests: 4, timeoutMs: 50 });
    expect(timeout.errors.byKind.timeout).toBe(4);
    expect(timeout.requests).toBe(4);
  });

  test("a Unix socket target", async () => {
    using dir = tempDir("forge-bench-");
    using server = countingServer({ unix: join(dir, "s.sock") });
    const r = await runLoad({ url: "http://instance/", unix: join(dir, "s.sock"), concurrency: 4, requests: 200 });
    expect(r.ok).toBe(200);
    expect(server.seen.requests).toBe(200);
    expect(r.connections).toBe(4);
  });

  test("an abort signal stops an open-ended run; progress is reported", async () => {
    using server = countingServer();
    const stop = new AbortController();
    let calls = 0;
    const r = await runLoad({
      url: server.url,
      concurrency: 2,
      durationMs: 60_000,
      signal: stop.signal,
      progressEveryMs: 5,
      onProgress: (p) => {
        calls++;
        if (p.completed >= 100) stop.abort();
      },
    });
    expect(calls).toBeGreaterThan(0);
    expect(r.requests).toBeGreaterThanOrEqual(100);
    expect(server.seen.requests).toBe(r.requests);
  });

  test("on a worker thread: the same counts, the histogram rebuilt", async () => {
    using server = countingServer();
    const r = await runLoadInWorker({ url: server.url, concurrency: 8, requests: 1000 });
    expect(server.seen.requests).toBe(1000);
    expect(r.ok).toBe(1000);
    expect(r.latency.count).toBe(1000);
    expect(r.latency.percentile(50)).toBeGreaterThan(0);
    expect(r.connections).toBe(8);
  });

  test("bad input: concurrency 0, requests 0, a non-http URL", async () => {
    await expect(runLoad({ url: "http://127.0.0.1:1/", concurrency: 0, requests: 1 })).rejects.toThrow(RangeError);
    await expect(runLoad({ url: "http://127.0.0.1:1/", concurrency: 1, requests: 0 })).rejects.toThrow(RangeError);
    await expect(runLoad({ url: "ftp://127.0.0.1/", concurrency: 1, requests: 1 })).rejects.toThrow(RangeError);
  });
});
