/**
 * The gateway (the raw HTTP/1.1 front door) against real sockets: the fast path's framing
 * (lengths, chunked, HEAD, pipelining, keep-alive and close), what it hands to Bun.serve
 * (chunked uploads, smuggling attempts, the control API on a used connection), and the
 * limits (413). Bytes are written and read raw, so nothing in between fixes them up.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { clientKey } from "../src/dataplane/hosts.ts";
import { Framing } from "../src/dataplane/http1/framing.ts";
import { parseResponseHead } from "../src/dataplane/http1/response-head.ts";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

let forge: ForgeProcess;
const dir = tempDir("forge-gw-");

/** A deploy through the CLI; a failure says what the CLI printed (and what forge logged). */
async function deployOrSay(args: string[]): Promise<void> {
  const r = await cli(forge, args);
  if (r.code !== 0) throw new Error(`forge ${args.join(" ")} exited ${r.code}:\n${r.stdout}\n${r.stderr}\nforge's log:\n${forge.output().slice(-4000)}`);
}

beforeAll(async () => {
  forge = await startForge({ env: { FORGE_MAX_BODY_MB: "1", FORGE_IDLE_TIMEOUT: "1s", FORGE_HEAD_TIMEOUT: "1s", FORGE_BODY_TIMEOUT: "1s", FORGE_SEND_TIMEOUT: "1s" } });
  writeFileSync(
    join(dir, "index.ts"),
    `export default { async fetch(req: Request) {
       const url = new URL(req.url);
       if (url.pathname === "/stream") {
         const enc = new TextEncoder();
         let i = 0;
         return new Response(new ReadableStream({ async pull(c) {
           if (i === 3) return c.close();
           c.enqueue(enc.encode("part" + i++ + ";"));
           await Bun.sleep(5); // separate writes, so the chunks arrive apart
         } }));
       }
       if (url.pathname === "/slow") { await Bun.sleep(5000); return new Response("late"); }
       if (url.pathname === "/echo-header") return new Response("ok", { headers: { "x-echo": url.searchParams.get("v") ?? "" } });
       if (url.pathname === "/bytes") return new Response("x".repeat(Number(url.searchParams.get("n") ?? "0")));
       if (url.pathname === "/wait") { await Bun.sleep(1500); return new Response("waited"); }
       if (url.pathname === "/big-stream") {
         // 32 MB in 64 KB pieces (more than kernel buffers hold), produced only as fast as the client takes them.
         let i = 0;
         return new Response(new ReadableStream({ pull(c) { if (i++ === 512) return c.close(); c.enqueue(new Uint8Array(65536).fill(120)); } }));
       }
       const body = new Uint8Array(await req.arrayBuffer());
       let sum = 0;
       for (const b of body) sum = (sum + b) % 65521;
       return Response.json({ method: req.method, path: url.pathname + url.search, length: body.length, sum,
         id: req.headers.get("x-forge-request-id"), te: req.headers.get("transfer-encoding"), connection: req.headers.get("connection"), control: req.headers.get("x-forge-control"), secret: req.headers.get("x-secret"),
         xff: req.headers.get("x-forwarded-for"), proto: req.headers.get("x-forwarded-proto"), fhost: req.headers.get("x-forwarded-host"),
         prefix: req.headers.get("x-forwarded-prefix"), forwarded: req.headers.get("forwarded"), realIp: req.headers.get("x-real-ip"), clientIp: req.headers.get("x-forge-client-ip"), clientId: req.headers.get("x-forge-client-request-id") });
     } };`,
  );
  writeFileSync(join(dir, "forge.json"), JSON.stringify({ timeoutMs: 2500 }));
  await deployOrSay(["deploy", dir, "--name", "gw"]);
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

const host = (): string => `gw.localhost:${forge.port}`;

interface RawResponse {
  status: number;
  headers: Map<string, string>;
  body: Buffer;
}

/** Parses whole HTTP/1.1 responses out of bytes (content-length, chunked, or until the end when `closed`). */
function parseResponses(data: Buffer, closed: boolean, heads: boolean[] = []): { responses: RawResponse[]; complete: boolean; pos: number } {
  const responses: RawResponse[] = [];
  let pos = 0;
  // `at`: where the last whole response ended, so a caller can go on from there.
  let at = 0;
  const partial = () => ({ responses, complete: false, pos: at });
  while (pos < data.length) {
    at = pos;
    const end = data.indexOf("\r\n\r\n", pos);
    if (end < 0) return partial();
    const lines = data.toString("latin1", pos, end).split("\r\n");
    const status = Number(lines[0]?.split(" ")[1]);
    const headers = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const c = l.indexOf(":");
      headers.set(l.slice(0, c).toLowerCase(), l.slice(c + 1).trim());
    }
    pos = end + 4;
    const isHead = heads[responses.length] ?? false;
    if (isHead) responses.push({ status, headers, body: Buffer.alloc(0) });
    else if (headers.has("content-length")) {
      const n = Number(headers.get("content-length"));
      if (data.length < pos + n) return partial();
      responses.push({ status, headers, body: data.subarray(pos, pos + n) });
      pos += n;
    } else if (headers.get("transfer-encoding") === "chunked") {
      const parts: Buffer[] = [];
      for (;;) {
        const le = data.indexOf("\r\n", pos);
        if (le < 0) return partial();
        const size = Number.parseInt(data.toString("latin1", pos, le), 16);
        if (data.length < le + 2 + size + 2) return partial();
        pos = le + 2 + size + 2;
        if (size === 0) break;
        parts.push(data.subarray(le + 2, le + 2 + size));
      }
      responses.push({ status, headers, body: Buffer.concat(parts) });
    } else {
      if (!closed) return partial();
      responses.push({ status, headers, body: data.subarray(pos) });
      pos = data.length;
    }
  }
  return { responses, complete: true, pos };
}

/** Writes `parts` (one write each) on a fresh connection and collects `expected` responses, or all of them until the server closes. */
async function exchange(
  parts: (string | Uint8Array)[],
  expected: number,
  heads: boolean[] = [],
  options: { pauseFirst?: boolean; beforePart?: (index: number) => Promise<void>; afterWrite?: () => Promise<void> } = {},
): Promise<{ responses: RawResponse[]; closed: boolean }> {
  // Parsed as it comes: only the tail not yet parsed is kept and looked at again, so that a
  // client reading 50,000 answers is not itself the slow reader (reparsing all it got on every
  // chunk took it seconds under load, and the gateway rightly closed on it).
  let pending = Buffer.alloc(0);
  let seen = "";
  const responses: RawResponse[] = [];
  let closed = false;
  const done = Promise.withResolvers<void>();
  const drained = { resolve: (): void => {} };
  const check = (): void => {
    const r = parseResponses(pending, closed, heads.slice(responses.length));
    for (const response of r.responses) responses.push(response);
    pending = pending.subarray(r.pos);
    if ((r.complete && responses.length >= expected) || closed) done.resolve();
  };
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port: forge.port,
    socket: {
      data(_s, chunk) {
        if (seen.length < 400) seen += chunk.toString("latin1", 0, 400);
        pending = pending.length === 0 ? Buffer.from(chunk) : Buffer.concat([pending, chunk]);
        check();
      },
      drain() {
        drained.resolve();
      },
      close() {
        closed = true;
        check();
      },
      error() {
        closed = true;
        check();
      },
    },
  });
  try {
    // With pauseFirst the client reads nothing until all of its bytes are written.
    if (options.pauseFirst) socket.pause();
    for (const [index, p] of parts.entries()) {
      await options.beforePart?.(index);
      let bytes = typeof p === "string" ? Buffer.from(p, "latin1") : p;
      for (;;) {
        const written = socket.write(bytes);
        if (written >= bytes.length) break;
        bytes = bytes.subarray(Math.max(0, written));
        await new Promise<void>((resolve) => (drained.resolve = resolve));
      }
      socket.flush();
    }
    await options.afterWrite?.();
    if (options.pauseFirst) socket.resume();
    const timer = setTimeout(() => done.reject(new Error(`no ${expected} responses within 10 s; got ${responses.length}, starting ${JSON.stringify(seen.slice(0, 400))}`)), 10_000);
    await done.promise.finally(() => clearTimeout(timer));
    return { responses, closed };
  } finally {
    socket.end();
  }
}

/** The ids of the test function's instances, sorted. */
const instanceIds = async (): Promise<string[]> =>
  ((await (await forge.api("/v1/functions/gw")).json()) as { pool: { instances: { id: string }[] } }).pool.instances.map((i) => i.id).sort();

const get = (path: string, extra = ""): string => `GET ${path} HTTP/1.1\r\nHost: ${host()}\r\n${extra}\r\n`;
const json = (r: RawResponse | undefined): Record<string, unknown> => JSON.parse(r?.body.toString() ?? "null") as Record<string, unknown>;

describe("the gateway's fast path", () => {
  test("a GET is answered with the request id and start kind, and the connection stays open", async () => {
    const { responses, closed } = await exchange([get("/a?x=1")], 1);
    expect(closed).toBe(false);
    const r = responses[0];
    expect(r?.status).toBe(200);
    expect(json(r)).toMatchObject({ method: "GET", path: "/a?x=1", length: 0 });
    expect(r?.headers.get("x-forge-start")).toMatch(/^(warm|cell|cold)$/);
    expect(r?.headers.get("x-forge-request-id")).toBe(String(json(r).id));
  });

  test("pipelined requests are answered in order on one connection", async () => {
    const three = get("/1") + get("/2") + `POST /3 HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 5\r\n\r\nhello`;
    const { responses } = await exchange([three], 3);
    expect(responses.map((r) => json(r).path)).toEqual(["/1", "/2", "/3"]);
    expect(json(responses[2])).toMatchObject({ method: "POST", length: 5 });
    const ids = new Set(responses.map((r) => r.headers.get("x-forge-request-id")));
    expect(ids.size).toBe(3);
  });

  test("a head split across writes, and a body sent in pieces, arrive whole", async () => {
    const body = Buffer.alloc(300_000, 7);
    const head = `PUT /big HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: ${body.length}\r\n\r\n`;
    const { responses } = await exchange([head.slice(0, 10), head.slice(10), body.subarray(0, 1000), body.subarray(1000, 200_000), body.subarray(200_000)], 1);
    expect(json(responses[0])).toMatchObject({ method: "PUT", length: body.length, sum: (7 * body.length) % 65521 });
  });

  test("a head of 8 KB sent a byte at a time is answered (its pieces are joined once, not re-copied each time)", async () => {
    const head = get("/trickle", `X-Pad: ${"p".repeat(8 * 1024)}\r\n`);
    const { responses } = await exchange([...Buffer.from(head)].map((b) => Uint8Array.of(b)), 1);
    expect(responses[0]?.status).toBe(200);
    expect(json(responses[0])).toMatchObject({ method: "GET", path: "/trickle" });
  });

  test("uploads in pieces on new connections to the instance are not stalled", async () => {
    // Four at once: the instance gets connections it never had before this request.
    const body = Buffer.alloc(100_000, 3);
    const head = `POST /fresh HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: ${body.length}\r\n\r\n`;
    const all = await Promise.all(Array.from({ length: 4 }, () => exchange([head, body.subarray(0, 10), body.subarray(10, 50_000), body.subarray(50_000)], 1)));
    for (const { responses } of all) expect(json(responses[0])).toMatchObject({ method: "POST", length: body.length, sum: (3 * body.length) % 65521 });
  });

  test("a streamed response passes chunk by chunk with its framing", async () => {
    const { responses } = await exchange([get("/stream")], 1);
    expect(responses[0]?.headers.get("transfer-encoding")).toBe("chunked");
    expect(responses[0]?.body.toString()).toBe("part0;part1;part2;");
    expect(responses[0]?.headers.get("x-forge-request-id")).toBeTruthy();
  });

  test("HEAD gets the head only, and the next request on the connection still works", async () => {
    const { responses } = await exchange([`HEAD /h HTTP/1.1\r\nHost: ${host()}\r\n\r\n` + get("/after")], 2, [true, false]);
    expect(responses[0]?.status).toBe(200);
    expect(responses[0]?.body.length).toBe(0);
    expect(json(responses[1]).path).toBe("/after");
  });

  test("Connection: close is honoured and not passed to the instance", async () => {
    // Asking for two responses: exchange() then returns when the server closes.
    const { responses, closed } = await exchange([get("/bye", "Connection: close\r\n") + get("/never")], 2);
    expect(closed).toBe(true);
    expect(responses.length).toBe(1);
    expect(responses[0]?.headers.get("connection")).toBe("close");
    expect(json(responses[0]).connection).not.toBe("close");
  });

  test("a client's request id is never used: two requests sending one id get two ids of forge's", async () => {
    const { responses } = await exchange([get("/k", "X-Forge-Request-Id: my-trace-0001\r\n") + get("/k", "X-Forge-Request-Id: my-trace-0001\r\n")], 2);
    const ids = responses.map((r) => r.headers.get("x-forge-request-id"));
    expect(ids[0]).not.toBe("my-trace-0001");
    expect(ids[1]).not.toBe("my-trace-0001");
    expect(ids[0]).not.toBe(ids[1]);
    expect(json(responses[0]).id).toBe(ids[0]);
    expect(String(json(responses[1]).id)).toMatch(/^[A-Za-z0-9._:-]{8,}$/);
  });

  test("unknown methods (FOO, get, BREW) are a 501 to that client alone; the instance goes on serving", async () => {
    const before = await instanceIds();
    expect(before.length).toBeGreaterThan(0);
    const odd = ["FOO", "get", "BREW"].map((m) => `${m} / HTTP/1.1\r\nHost: ${host()}\r\n\r\n`).join("");
    const { responses } = await exchange([odd + get("/after")], 4);
    expect(responses.map((r) => r.status)).toEqual([501, 501, 501, 200]);
    expect(json(responses[0])).toMatchObject({ error: { code: "method_not_implemented" } });
    expect(await instanceIds()).toEqual(before);
  });

  test("a client's x-forge-control header never reaches the instance", async () => {
    const { responses } = await exchange([get("/k", "X-Forge-Control: guess\r\n")], 1);
    expect(responses[0]?.status).toBe(200);
    expect(json(responses[0]).control).toBeNull();
  });

  test("a body over the limit is a 413 with a hint, and the connection closes", async () => {
    const { responses } = await exchange([`POST / HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\nabc`], 1);
    expect(responses[0]?.status).toBe(413);
    expect(responses[0]?.headers.get("connection")).toBe("close");
    expect((json(responses[0]).error as { hint: string }).hint).toContain("FORGE_MAX_BODY_MB");
  });

  test("a body over the limit is a 413 on the tunnelled paths too (/fn/<name>)", async () => {
    const { responses } = await exchange([`POST /fn/gw/ HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\nabc`], 1);
    expect(responses[0]?.status).toBe(413);
    expect((json(responses[0]).error as { hint: string }).hint).toContain("FORGE_MAX_BODY_MB");
  });

  test("a chunked upload past the limit is a 413 too (it has no length to check up front)", async () => {
    const chunk = "x".repeat(64 * 1024);
    const parts = [`POST /big HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: chunked\r\n\r\n`];
    for (let i = 0; i < 24; i++) parts.push(`${chunk.length.toString(16)}\r\n${chunk}\r\n`); // 1.5 MB > FORGE_MAX_BODY_MB=1
    parts.push("0\r\n\r\n");
    const { responses } = await exchange(parts, 1);
    expect(responses[0]?.status).toBe(413);
  });

  test("an unknown function is a 404 JSON error", async () => {
    const { responses } = await exchange([`GET / HTTP/1.1\r\nHost: nope.localhost:${forge.port}\r\n\r\n`], 1);
    expect(responses[0]?.status).toBe(404);
    expect((json(responses[0]).error as { code: string }).code).toBe("function_not_found");
  });

  test("a function over its timeout is a 504 and the connection serves the next request", async () => {
    const { responses } = await exchange([get("/slow") + get("/next")], 2);
    expect(responses[0]?.status).toBe(504);
    expect(responses[0]?.headers.get("x-forge-request-id")).toBeTruthy();
    expect(json(responses[1]).path).toBe("/next");
  });
});

describe("clients that pipeline", () => {
  test("a client that pipelines without reading gets every answer in order, and the body of a refused request is never read as a request", async () => {
    // 300 answers of 64 KiB (far more than the socket buffers hold) while the client does not
    // read, then a request refused with 413 whose "body" is another request.
    let pipeline = "";
    for (let i = 0; i < 300; i++) pipeline += get(`/bytes?n=65536&i=${i}`);
    pipeline += `POST /refused HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\n`;
    const { responses, closed } = await exchange([pipeline + get("/smuggled")], 302, [], { pauseFirst: true });
    expect(closed).toBe(true);
    expect(responses.length).toBe(301);
    expect(responses.slice(0, 300).every((r) => r.status === 200 && r.body.length === 65536)).toBe(true);
    expect(responses[300]?.status).toBe(413);
  });

  test("after Connection: close, bytes the client sends while its answer is still unread are not served", async () => {
    const served = async (): Promise<number> => {
      const text = await (await fetch(`${forge.url}/metrics`)).text();
      let sum = 0;
      for (const m of text.matchAll(/forge_invocations_total\{function="gw",status="200",start="\w+"\} (\d+)/g)) sum += Number(m[1]);
      return sum;
    };
    const before = await served();
    // 200 kB the paused client does not read; the next request is written once the gateway has
    // finished the first (seen in /metrics), so it arrives after the close was decided.
    const { responses, closed } = await exchange([get("/bytes?n=200000", "Connection: close\r\n"), get("/smuggled")], 2, [], {
      pauseFirst: true,
      beforePart: async (index) => {
        if (index === 1) await until(async () => (await served()) > before || undefined, 10_000, "the first answer");
      },
    });
    expect(closed).toBe(true);
    expect(responses.map((r) => [r.status, r.body.length])).toEqual([[200, 200000]]);
  });

  test("thousands of pipelined requests answered at once (404s) are all answered, and the connection still serves", async () => {
    const n = 50_000;
    const { responses, closed } = await exchange([`GET / HTTP/1.1\r\nHost: nope.localhost\r\n\r\n`.repeat(n) + get("/last")], n + 1);
    expect(closed).toBe(false);
    expect(responses.length).toBe(n + 1);
    expect(responses.slice(0, n).every((r) => r.status === 404)).toBe(true);
    expect(json(responses[n]).path).toBe("/last");
  });

  test("an error answer to HEAD has no body, so the next response is read right", async () => {
    const { responses } = await exchange([`HEAD / HTTP/1.1\r\nHost: nope.localhost:${forge.port}\r\n\r\n` + get("/after-head")], 2, [true, false]);
    expect(responses[0]?.status).toBe(404);
    expect(Number(responses[0]?.headers.get("content-length"))).toBeGreaterThan(0);
    expect(responses[1]?.status).toBe(200);
    expect(json(responses[1]).path).toBe("/after-head");
  });
});

describe("one slot (concurrency 1, one instance)", () => {
  const one = (): string => `gw1.localhost:${forge.port}`;
  beforeAll(async () => {
    await deployOrSay(["deploy", dir, "--name", "gw1", "--concurrency", "1", "--max-instances", "1"]);
  });

  test("a client that does not read its answer (of known length, 200 kB) does not keep the slot", async () => {
    // The first client never reads; the second must still be served by the one slot.
    const stuck = exchange([`GET /bytes?n=200000 HTTP/1.1\r\nHost: ${one()}\r\n\r\n`], 1, [], { pauseFirst: true, afterWrite: () => new Promise(() => {}) });
    void stuck.catch(() => undefined);
    const r = await exchange([`GET /second HTTP/1.1\r\nHost: ${one()}\r\n\r\n`], 1);
    expect(r.responses[0]?.status).toBe(200);
    expect(json(r.responses[0]).path).toBe("/second");
  });

  test("a client that goes away while queued is recorded with 499", async () => {
    const pool = async (): Promise<{ queued: number; instances: { inFlight: number }[] }> =>
      ((await (await forge.api("/v1/functions/gw1")).json()) as { pool: { queued: number; instances: { inFlight: number }[] } }).pool;
    const busy = exchange([`GET /wait HTTP/1.1\r\nHost: ${one()}\r\n\r\n`], 1);
    await until(async () => (await pool()).instances.some((i) => i.inFlight > 0) || undefined, 5_000, "/wait in flight");
    // Queued behind /wait, then gone: the socket is closed once the request is in the queue.
    const queued = await Bun.connect({ hostname: "127.0.0.1", port: forge.port, socket: { data() {} } });
    queued.write(`GET /queued HTTP/1.1\r\nHost: ${one()}\r\n\r\n`);
    await until(async () => (await pool()).queued > 0 || undefined, 5_000, "the request in the queue");
    queued.end();
    expect((await busy).responses[0]?.status).toBe(200);
    await until(async () => {
      const r = (await (await forge.api("/v1/functions/gw1/invocations?status=499")).json()) as { invocations: unknown[] };
      return r.invocations.length === 1 || undefined;
    }, 5_000, "the 499 record");
  });
});

describe("idle connections", () => {
  test("a head that never completes gets a 408 after FORGE_HEAD_TIMEOUT; a kept-alive connection left idle is closed after FORGE_IDLE_TIMEOUT", async () => {
    const started = Date.now();
    // Two responses asked for: exchange() returns when the server closes the connection.
    const slow = await exchange([`GET / HTTP/1.1\r\nHo`], 2);
    expect(slow.closed).toBe(true);
    expect(slow.responses.map((r) => [r.status, r.headers.get("connection")])).toEqual([[408, "close"]]);
    const idle = await exchange([get("/once")], 2);
    expect(idle.closed).toBe(true);
    expect(idle.responses.map((r) => json(r).path)).toEqual(["/once"]);
    // Two timeouts of 1 s, each measured on the gateway's 50 ms clock.
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
  });

  test("an answer the client reads only after the idle timeout still arrives whole (the close is a FIN, not a reset)", async () => {
    const { responses, closed } = await exchange([get("/bytes?n=250000")], 2, [], {
      pauseFirst: true,
      // The client reads nothing for 2.5 idle timeouts: the waiting is the behaviour under test.
      afterWrite: () => Bun.sleep(2500),
    });
    expect(closed).toBe(true);
    expect(responses.map((r) => [r.status, r.body.length])).toEqual([[200, 250000]]);
  });

  test("a tunnelled request (the control API) closes its connection once answered", async () => {
    const { responses, closed } = await exchange([`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\n\r\n`], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => [r.status, r.headers.get("connection")])).toEqual([[200, "close"]]);
  });

  test("a followed log stream with nothing to say stays open past the idle timeout (heartbeats)", async () => {
    const res = await forge.api("/v1/functions/gw/logs?follow=1");
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    const end = Date.now() + 2500;
    try {
      // Each read ends with a heartbeat (an empty line); the stream must not end meanwhile.
      while (Date.now() < end) expect((await reader.read()).done).toBe(false);
    } finally {
      await reader.cancel();
    }
  });

  test("a request that takes longer than the idle timeout is not cut", async () => {
    const { responses } = await exchange([get("/wait")], 1);
    expect(responses[0]?.status).toBe(200);
    expect(responses[0]?.body.toString()).toBe("waited");
  });
});

describe("what the gateway hands to Bun.serve", () => {
  test("a chunked upload reaches the function through the tunnel", async () => {
    const req = `POST /up HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n`;
    const { responses } = await exchange([req], 1);
    expect(json(responses[0])).toMatchObject({ method: "POST", length: 11 });
  });

  test("Content-Length with Transfer-Encoding (a smuggling attempt) never reaches the fast path's parser", async () => {
    const smuggle = `POST / HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: ${host()}\r\n\r\n`;
    // Two asked for: exchange() returns when Bun.serve, having refused the message, closes.
    const { responses, closed } = await exchange([smuggle], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => r.status)).toEqual([400]);
  });

  test("two equal Content-Length headers through /fn/<name> are a 400, and stop no instance", async () => {
    const before = await instanceIds();
    const dup = `POST /fn/gw/ HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello`;
    for (let i = 0; i < 5; i++) {
      const { responses } = await exchange([dup], 1);
      expect(responses[0]?.status).toBe(400);
    }
    expect(await instanceIds()).toEqual(before);
  });

  test("two Host headers are a 400 (RFC 9112 §3.2), not a 404", async () => {
    const { responses } = await exchange([`GET / HTTP/1.1\r\nHost: ${host()}\r\nHost: other.localhost\r\n\r\n`], 1);
    expect(responses[0]?.status).toBe(400);
  });

  test("a Host with a port past 65535, or not a number, is a 400 and never reaches the function", async () => {
    for (const bad of [`gw.localhost:99999`, `gw.localhost:8o8o`, `gw.localhost:1:2`]) {
      const { responses } = await exchange([`GET / HTTP/1.1\r\nHost: ${bad}\r\n\r\n`], 1);
      expect(responses[0]?.status, bad).toBe(400);
    }
  });

  test("a client naming forge's own headers or Host in Connection strips none of them", async () => {
    const { responses } = await exchange([get("/cid", "Connection: keep-alive, x-forge-request-id, host\r\n")], 1);
    expect(responses[0]?.status).toBe(200);
    expect(json(responses[0]).id).toBe(responses[0]?.headers.get("x-forge-request-id") ?? "missing");
  });

  test("an answer whose header holds a DEL or another control byte (not NUL, CR, LF) is passed on, as nginx does", async () => {
    const { responses } = await exchange([get("/echo-header?v=a%7Fb%01c")], 1);
    expect(responses[0]?.status).toBe(200);
    expect(responses[0]?.headers.get("x-echo")).toBe("a\x7fb\x01c");
  });

  test("headers named by Connection are hop-by-hop: never passed on to the function", async () => {
    const { responses } = await exchange([get("/conn", "Connection: keep-alive, X-Secret\r\nX-Secret: s3cret\r\n")], 1);
    expect(responses[0]?.status).toBe(200);
    expect(json(responses[0])).toMatchObject({ path: "/conn", secret: null });
  });

  test("an absolute-form target naming another host than Host is a 400, not routed by Host", async () => {
    const { responses } = await exchange([`GET http://other.localhost/x HTTP/1.1\r\nHost: ${host()}\r\n\r\n`], 1);
    expect(responses[0]?.status).toBe(400);
  });

  test("a head with bare LF line ends is answered at once (Bun's parser: 505), not held until the idle timeout", async () => {
    const { responses } = await exchange([`GET / HTTP/1.1\nHost: ${host()}\n\n`], 1);
    // Held, it would be closed after the idle timeout with no answer at all.
    expect([400, 505]).toContain(responses[0]?.status ?? 0);
  });

  test("Expect: 100-continue with a declared body over the limit is a 413 at once, never a 100 first", async () => {
    for (const target of [`POST / HTTP/1.1\r\nHost: ${host()}`, `POST /fn/gw/ HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}`]) {
      const { responses } = await exchange([`${target}\r\nExpect: 100-continue\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\n`], 1);
      expect(responses[0]?.status, target).toBe(413);
    }
  });

  test("CONNECT is a 501: forge is no forward proxy", async () => {
    const { responses } = await exchange([`CONNECT ${host()} HTTP/1.1\r\nHost: ${host()}\r\n\r\n`], 1);
    expect(responses[0]?.status).toBe(501);
  });

  test("two Content-Length headers are refused", async () => {
    const { responses } = await exchange([`POST / HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab`], 1);
    expect(responses[0]?.status).toBe(400);
  });

  test("a space before a header's colon, or a folded header line, is refused by Bun's parser", async () => {
    for (const bad of [`GET / HTTP/1.1\r\nHost: ${host()}\r\nContent-Length : 3\r\n\r\nabc`, `GET / HTTP/1.1\r\nHost: ${host()}\r\nX-A: 1\r\n  folded\r\n\r\n`]) {
      const { responses } = await exchange([bad], 1);
      expect(responses[0]?.status).toBe(400);
    }
  });

  test("the control API works on a connection that first called a function", async () => {
    const { responses } = await exchange([get("/first") + `GET /v1/functions/gw HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\nAuthorization: Bearer ${forge.apiKey}\r\n\r\n`], 2);
    expect(json(responses[0]).path).toBe("/first");
    expect(responses[1]?.status).toBe(200);
    expect(json(responses[1]).name).toBe("gw");
  });

  test("an HTTP/1.0 request is answered", async () => {
    const { responses } = await exchange([`GET /old HTTP/1.0\r\nHost: ${host()}\r\n\r\n`], 1);
    expect(json(responses[0]).path).toBe("/old");
  });
});

describe("when the API server behind the gateway is gone", () => {
  test("a request for it is a 503 with a hint, not a dropped connection", async () => {
    await using lone = await startForge();
    rmSync(join(lone.dataDir, "api.sock"));
    const r = await lone.api("/v1/functions");
    expect(r.status).toBe(503);
    expect(((await r.json()) as { error: { hint: string } }).error.hint).toContain("restart");
  });
});

describe("response framing", () => {
  const feedAll = (f: Framing, bytes: Buffer, step: number): number => {
    let used = 0;
    for (let i = 0; i < bytes.length && !f.done; i += step) {
      const piece = bytes.subarray(i, Math.min(bytes.length, i + step));
      const end = f.feed(piece, 0);
      used = i + end;
    }
    return used;
  };

  test("a chunked body's end is found however the bytes are split", () => {
    const body = Buffer.from("4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\nNEXT");
    for (let step = 1; step <= body.length; step++) {
      const f = new Framing();
      f.chunked();
      expect(feedAll(f, body, step)).toBe(body.length - 4);
      expect(f.done).toBe(true);
    }
  });

  test("malformed response heads from an instance are refused (a 502), as nginx refuses them", () => {
    const bad = [
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nX-A: a\u0000b\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length : 50\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
      "HTTP/1.1 2e2 OK\r\nContent-Length: 0\r\n\r\n",
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
      "HTTP/2 200 OK\r\n\r\n",
    ];
    for (const head of bad) expect(() => parseResponseHead(Buffer.from(head, "latin1")), head).toThrow();
  });

  test("clients are counted per address, IPv6 per /64", () => {
    expect(clientKey("203.0.113.7")).toBe("203.0.113.7");
    expect(clientKey("::ffff:203.0.113.7")).toBe("::ffff:203.0.113.7");
    expect(clientKey("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:db8:1:2:bbbb:cccc:dddd:eeee")).toBe("2001:db8:1:2::/64");
    expect(clientKey("2001:db8::1")).toBe("2001:db8:0:0::/64");
    expect(clientKey("::1")).toBe("0:0:0:0::/64");
  });

  test("a 103 before the answer is passed on; hop-by-hop lines are cut; an incomplete head waits", () => {
    const data = Buffer.from("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok");
    const parsed = parseResponseHead(data);
    if (!parsed.complete) throw new Error("complete expected");
    expect(data.toString("latin1", 0, parsed.interimEnd)).toStartWith("HTTP/1.1 103 Early Hints\r\n");
    expect(parsed).toMatchObject({ status: 200, length: 2, chunked: false, keepAlive: true, out: "HTTP/1.1 200 OK\r\nContent-Length: 2" });
    expect(data.toString("latin1", parsed.bodyStart)).toBe("ok");
    expect(parseResponseHead(Buffer.from("HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 O"))).toEqual({ complete: false, from: 28 });
    expect(parseResponseHead(Buffer.from("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"))).toMatchObject({ chunked: true, length: -1 });
  });

  test("a chunk size of more than 15 hex digits, or a size line ending in a bare LF, is refused", () => {
    for (const body of ["10000000000000005\r\nhello\r\n0\r\n\r\n", "5\nhello\r\n0\r\n\r\n", "5x\r\nhello\r\n"]) {
      const f = new Framing();
      f.chunked();
      expect(() => f.feed(Buffer.from(body), 0), JSON.stringify(body)).toThrow();
    }
  });

  test("a length-framed body ends at its length", () => {
    const f = new Framing();
    f.byLength(5);
    expect(f.feed(Buffer.from("abc"), 0)).toBe(3);
    expect(f.done).toBe(false);
    expect(f.feed(Buffer.from("deXYZ"), 0)).toBe(2);
    expect(f.done).toBe(true);
  });

  test("a broken chunk size throws", () => {
    const f = new Framing();
    f.chunked();
    expect(() => f.feed(Buffer.from("zz\r\n"), 0)).toThrow(/chunk size/);
  });
});

describe("connection limits", () => {
  /** Opens a connection that sends nothing; resolves with it and what it received before closing (if it was closed). */
  async function openIdle(port: number): Promise<{ socket: Awaited<ReturnType<typeof Bun.connect>>; closed: Promise<string> }> {
    const closed = Promise.withResolvers<string>();
    let got = "";
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        data: (_s, chunk) => void (got += chunk.toString("latin1")),
        close: () => closed.resolve(got),
        error: () => closed.resolve(got),
      },
    });
    return { socket, closed: closed.promise };
  }

  test("past FORGE_MAX_CONNECTIONS_PER_CLIENT a new connection is a 503 and closed; a slot freed is usable again", async () => {
    await using limited = await startForge({ env: { FORGE_MAX_CONNECTIONS_PER_CLIENT: "20" } });
    const held = await Promise.all(Array.from({ length: 20 }, () => openIdle(limited.port)));
    const extra = await openIdle(limited.port);
    const answer = await extra.closed;
    expect(answer).toStartWith("HTTP/1.1 503 ");
    expect(answer).toContain("the limit per client");
    // One held connection goes: a request gets through again.
    held[0]?.socket.end();
    await held[0]?.closed;
    await until(async () => (await fetch(`${limited.url}/healthz`).catch(() => undefined))?.status === 200, 10_000, "a connection admitted again");
    for (const h of held) h.socket.end();
  });

  test("past FORGE_MAX_CONNECTIONS a new connection is a 503 and closed", async () => {
    await using limited = await startForge({ env: { FORGE_MAX_CONNECTIONS: "10" } });
    const held = await Promise.all(Array.from({ length: 10 }, () => openIdle(limited.port)));
    const answer = await (await openIdle(limited.port)).closed;
    expect(answer).toStartWith("HTTP/1.1 503 ");
    expect(answer).toContain("connections open, its limit");
    for (const h of held) h.socket.end();
  });
});

describe("time limits", () => {
  beforeAll(async () => {
    await deployOrSay(["deploy", dir, "--name", "gw1s", "--concurrency", "1", "--max-instances", "1"]);
  });

  test("a head trickled a byte at a time gets a 408 once FORGE_HEAD_TIMEOUT passes, however often bytes come", async () => {
    const started = Date.now();
    const bytes = "GET / HTTP/1.1\r\nHost: " + host() + "\r\nX-Slow: " + "a".repeat(200);
    let got = "";
    let closed = false;
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port: forge.port,
      socket: { data: (_s, d) => void (got += d.toString("latin1")), close: () => void (closed = true), error: () => void (closed = true) },
    });
    try {
      // A byte every 50 ms: each would refresh an idle timer; the head's own clock runs on.
      for (const c of bytes) {
        if (closed) break;
        socket.write(c);
        await Bun.sleep(50);
      }
      await until(() => closed, 5_000, "the close");
    } finally {
      socket.end();
    }
    expect(got).toStartWith("HTTP/1.1 408 ");
    expect(Date.now() - started).toBeLessThan(bytes.length * 50);
  });

  test("after a tunnelled request, a next head trickled on the same connection is never read: the connection closes after the first answer", async () => {
    const { responses, closed } = await exchange([`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\n\r\nGET /v1/functions HTTP/1.1\r\nHo`, "s", "t"], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => [r.status, r.headers.get("connection")])).toEqual([[200, "close"]]);
  });

  test("pipelined requests behind a tunnelled one: the first is answered, then the connection closes cleanly", async () => {
    const { responses, closed } = await exchange([`GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\n\r\n` + get("/after")], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => r.status)).toEqual([200]);
  });

  test("a body that stops coming gets a 408 after FORGE_BODY_TIMEOUT, and the slot goes back", async () => {
    const { responses, closed } = await exchange([`POST /part HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 10\r\n\r\nhel`], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => [r.status, r.headers.get("connection")])).toEqual([[408, "close"]]);
    const after = await exchange([get("/next")], 1);
    expect(json(after.responses[0]).path).toBe("/next");
  });

  test("a client that stops reading a long streamed answer is cut after FORGE_SEND_TIMEOUT, and its slot serves the next client", async () => {
    const started = Date.now();
    const stuck = exchange([`GET /big-stream HTTP/1.1\r\nHost: gw1s.localhost:${forge.port}\r\n\r\n`], 1, [], { pauseFirst: true, afterWrite: () => new Promise(() => {}) });
    void stuck.catch(() => undefined);
    // gw1s has one slot: the second request is served only once the stuck client is cut.
    const r = await exchange([`GET /second HTTP/1.1\r\nHost: gw1s.localhost:${forge.port}\r\n\r\n`], 1);
    expect(json(r.responses[0]).path).toBe("/second");
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
  });
});

describe("client addresses and ids", () => {
  test("X-Forwarded-* from an untrusted client are replaced by what forge saw; its request id is kept apart", async () => {
    const spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forge-Client-IP: 6.6.6.6\r\nX-Forge-Request-Id: mine-1\r\n";
    const { responses } = await exchange([get("/who", spoof)], 1);
    expect(json(responses[0])).toMatchObject({ xff: "127.0.0.1", proto: "http", fhost: host(), clientIp: "127.0.0.1", clientId: "mine-1", prefix: null });
    expect(json(responses[0]).id).toBe(responses[0]?.headers.get("x-forge-request-id") ?? "missing");
    expect(json(responses[0]).id).not.toBe("mine-1");
  });

  test("/fn/<name>/ is served on the fast path with the prefix cut and said in X-Forwarded-Prefix", async () => {
    const { responses, closed } = await exchange([`GET /fn/gw/deep/path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\n\r\n` + `GET /fn/gw HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\n\r\n`], 2);
    expect(closed).toBe(false); // kept alive: not the one-request tunnel
    expect(responses.map((r) => json(r).path)).toEqual(["/deep/path?q=1", "/"]);
    expect(json(responses[0])).toMatchObject({ prefix: "/fn/gw", clientIp: "127.0.0.1" });
  });

  test("a tunnelled request (chunked) carries the forwarded headers too", async () => {
    const req = `POST /up HTTP/1.1\r\nHost: ${host()}\r\nX-Forwarded-For: 6.6.6.6\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`;
    const { responses } = await exchange([req], 1);
    expect(json(responses[0])).toMatchObject({ length: 5, xff: "127.0.0.1", clientIp: "127.0.0.1" });
  });
});

describe("what a hostile review found", () => {
  test("Expect: 100-continue through the tunnel: the 100 comes at once, the answer after the body", async () => {
    let got = "";
    const socket = await Bun.connect({ hostname: "127.0.0.1", port: forge.port, socket: { data: (_s, d) => void (got += d.toString("latin1")) } });
    try {
      socket.write(`POST /up HTTP/1.1\r\nHost: ${host()}\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n`);
      await until(() => got.startsWith("HTTP/1.1 100 Continue\r\n\r\n") || undefined, 5_000, "the 100 Continue");
      socket.write("hello");
      await until(() => got.includes('"length":5') || undefined, 5_000, "the answer");
    } finally {
      socket.end();
    }
  });

  test("a Host ending in \\xa0 is not taken for the function's (a 400, not the function's 500)", async () => {
    const { responses } = await exchange([`GET / HTTP/1.1\r\nHost: ${host()}\xa0\r\n\r\n`], 1);
    expect(responses[0]?.status).toBe(400);
  });

  test("a tunnelled chunked body that stops coming gets a 408", async () => {
    const { responses, closed } = await exchange([`POST /up HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel`], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => r.status)).toEqual([408]);
  });

  test("a chunk size of 17 digits in a tunnelled body is a 400, and nothing after it reaches the app", async () => {
    const { responses, closed } = await exchange([`POST /up HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000000\r\n\r\nGET /b HTTP/1.1\r\nHost: ${host()}\r\n\r\n`], 2);
    expect(closed).toBe(true);
    expect(responses.map((r) => r.status)).toEqual([400]);
  });

  test("transfer codings other than chunked, and chunked over HTTP/1.0, are a 400 from forge", async () => {
    for (const req of [
      `POST /up HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n`,
      `POST /up HTTP/1.1\r\nHost: ${host()}\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n`,
      `POST /up HTTP/1.0\r\nHost: ${host()}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
    ]) {
      const { responses } = await exchange([req], 2);
      expect([responses[0]?.status, (json(responses[0]).error as { code?: string } | undefined)?.code]).toEqual([400, "bad_request"]);
    }
  });

  test("Forwarded and X-Real-IP from a client are cut (forge's X-Forwarded-* say who it is)", async () => {
    const { responses } = await exchange([get("/who", "Forwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n")], 1);
    expect(json(responses[0])).toMatchObject({ forwarded: null, realIp: null, clientIp: "127.0.0.1" });
  });

  test("/fn/ with a percent-encoded name keeps the whole path after the name", async () => {
    const { responses } = await exchange([`GET /fn/%67w/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\n\r\n`], 2);
    expect(json(responses[0]).path).toBe("/x?q=1");
  });

  test("a Connection header naming more than 32 options is a 400", async () => {
    const { responses } = await exchange([get("/", `Connection: ${Array.from({ length: 40 }, (_, i) => `x-${i}`).join(", ")}\r\n`)], 2);
    expect(responses[0]?.status).toBe(400);
  });
});
