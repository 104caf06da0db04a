/**
 * The load generator's HTTP/1.1 client: how it reads a response head (readResponseHead, on
 * bytes), and, against raw servers on port 0, what it makes of responses that arrive in
 * pieces, interim answers, every body framing, and answers it cannot read. Then the one
 * thing runLoad does around it: a warm-up that is not counted.
 */
import { describe, expect, test } from "bun:test";
import { readResponseHead } from "../src/bench/_response-head.ts";
import { MalformedResponse } from "../src/dataplane/http1/response-head.ts";
import { runLoad } from "../src/bench/load.ts";

const head = (text: string): ReturnType<typeof readResponseHead> => readResponseHead(Buffer.from(text, "latin1"));

describe("readResponseHead", () => {
  test("reads the status, the length, keep-alive and where the body starts; field names in any case", () => {
    const text = "HTTP/1.1 200 OK\r\nServer: nginx\r\nCONTENT-length:  5 \r\nContent-Type: text/plain\r\n\r\nok 1\n";
    expect(head(text)).toEqual({ status: 200, length: 5, chunked: false, keepAlive: true, bodyStart: text.indexOf("ok 1") });
  });

  test("a status line with no reason phrase; no framing at all is length -1", () => {
    expect(head("HTTP/1.1 204\r\n\r\n")).toMatchObject({ status: 204, length: -1, chunked: false });
  });

  test("undefined while the head is not all there", () => {
    expect(head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")).toBeUndefined();
    expect(head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")).toBeUndefined();
  });

  test("interim answers are skipped; the final head is the one read", () => {
    const text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    expect(head(text)).toMatchObject({ status: 201, length: 2, bodyStart: text.length - 2 });
  });

  test("chunked when it is the last coding", () => {
    expect(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")).toMatchObject({ chunked: true, length: -1 });
    expect(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n")).toMatchObject({ chunked: true });
  });

  test("keep-alive: HTTP/1.1 unless it says close, HTTP/1.0 only when it says keep-alive", () => {
    expect(head("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n")?.keepAlive).toBe(false);
    expect(head("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")?.keepAlive).toBe(true);
    expect(head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")?.keepAlive).toBe(false);
    expect(head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")?.keepAlive).toBe(true);
  });

  test("a field named like a framing one is not taken for it", () => {
    expect(head("HTTP/1.1 200 OK\r\nContent-Length-Extra: 9\r\nConnectionx: close\r\nContent-Length: 1\r\n\r\n")).toMatchObject({ length: 1, keepAlive: true });
    expect(head("HTTP/1.1 200 OK\r\nContent\rLength: 9\r\nContent-Length: 1\r\n\r\n")).toMatchObject({ length: 1 });
  });

  test.each([
    ["not HTTP/1", "HTTP/2 200 OK\r\n\r\n"],
    ["a two-digit status", "HTTP/1.1 20 OK\r\n\r\n"],
    ["a status of 099", "HTTP/1.1 099 X\r\n\r\n"],
    ["a status run into its reason", "HTTP/1.1 200OK\r\n\r\n"],
    ["a 101 to a request that asked for no upgrade", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"],
    ["a content-length that is not digits", "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n"],
    ["an empty content-length", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n"],
    ["a content-length of 16 digits", "HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456\r\n\r\n"],
    ["a repeated content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"],
    ["a coding other than chunked last", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"],
    ["xchunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n"],
    ["both framings", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"],
    ["a framing line ending in a bare LF", "HTTP/1.1 200 OK\r\nContent-Length: 5\nX: y\r\n\r\n"],
  ])("refuses %s", (_, text) => {
    expect(() => head(text)).toThrow(MalformedResponse);
  });

  test("refuses a head longer than 64 KiB that has not ended", () => {
    expect(() => head(`HTTP/1.1 200 OK\r\nX: ${"a".repeat(70_000)}`)).toThrow(MalformedResponse);
  });
});

/** A raw TCP server answering every request (a line ending the head) with `answer`, written in `pieces` writes. */
function rawServer(answer: string, pieces = 1): { url: string; requests(): number } & Disposable {
  let requests = 0;
  const server = Bun.listen<{ got: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { got: "" };
      },
      async data(socket, chunk) {
        socket.data.got += chunk.toString("latin1");
        while (socket.data.got.includes("\r\n\r\n")) {
          socket.data.got = socket.data.got.slice(socket.data.got.indexOf("\r\n\r\n") + 4);
          requests++;
          const step = Math.ceil(answer.length / pieces);
          for (let at = 0; at < answer.length; at += step) {
            socket.write(answer.slice(at, at + step));
            if (pieces > 1) await Bun.sleep(1); // so that each piece is a read of its own
          }
        }
      },
    },
  });
  return { url: `http://127.0.0.1:${server.port}/`, requests: () => requests, [Symbol.dispose]: () => server.stop(true) };
}

describe("the generator's client against raw servers", () => {
  test("a head and body that arrive a few bytes at a time are read whole, on one connection", async () => {
    using server = rawServer("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world", 20);
    const r = await runLoad({ url: server.url, concurrency: 1, requests: 5 });
    expect(r.ok).toBe(5);
    expect(r.connections).toBe(1);
  });

  test("a chunked body with extensions and trailers, in pieces", async () => {
    using server = rawServer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n", 7);
    const r = await runLoad({ url: server.url, concurrency: 2, requests: 10 });
    expect(r.ok).toBe(10);
    expect(r.connections).toBe(2);
  });

  test("interim answers before the response", async () => {
    using server = rawServer("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    const r = await runLoad({ url: server.url, concurrency: 1, requests: 3 });
    expect(r.statuses).toEqual({ "200": 3 });
    expect(r.connections).toBe(1);
  });

  test("a body until the server closes: one connection a request", async () => {
    const server = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data(socket) {
          socket.write("HTTP/1.1 200 OK\r\n\r\nall of it");
          socket.end();
        },
      },
    });
    try {
      const r = await runLoad({ url: `http://127.0.0.1:${server.port}/`, concurrency: 1, requests: 3 });
      expect(r.ok).toBe(3);
      expect(r.connections).toBe(3);
    } finally {
      server.stop(true);
    }
  });

  test("Connection: close is honoured: a new connection for the next request", async () => {
    using server = rawServer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
    const r = await runLoad({ url: server.url, concurrency: 1, requests: 3 });
    expect(r.ok).toBe(3);
    expect(r.connections).toBe(3);
  });

  test.each([
    ["a 101", "HTTP/1.1 101 Switching Protocols\r\n\r\n"],
    ["a malformed status line", "HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok"],
    ["broken chunk framing", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    ["bytes after the response", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"],
  ])("%s: a protocol error, or a connection never reused", async (what, answer) => {
    using server = rawServer(answer);
    const r = await runLoad({ url: server.url, concurrency: 1, requests: 3, timeoutMs: 2000 });
    expect(r.requests).toBe(3);
    if (what === "bytes after the response") expect(r.connections).toBe(3);
    else {
      expect(r.errors.byKind.protocol).toBe(3);
      expect(r.errors.samples.protocol).toBeTruthy();
    }
  });
});

describe("runLoad around the client", () => {
  test("a warm-up loads the server but is not counted; the generator's CPU is reported", async () => {
    let seen = 0;
    const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => (seen++, new Response("ok")) });
    try {
      const r = await runLoad({ url: `http://127.0.0.1:${server.port}/`, concurrency: 4, requests: 200, warmupMs: 100 });
      expect(r.requests).toBe(200);
      expect(r.latency.count).toBe(200);
      expect(seen).toBeGreaterThan(200);
      expect(r.connections).toBe(4);
      expect(r.cpuUs).toBeGreaterThan(0);
    } finally {
      await server.stop(true);
    }
  });
});
