import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "bun";
import { until } from "../../test/_helpers.ts";
import { MalformedResponse } from "../dataplane/http1/response-head.ts";
import { ErrorCode, isForgeError } from "../errors.ts";
import { Abort, UpstreamPool } from "./upstream.ts";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "forge-upstream-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const sock = (name = "s.sock"): string => join(dir, name);
const get = (path: string, init: { method?: string; headers?: Record<string, string>; body?: ReadableStream<Uint8Array> | Uint8Array | null; signal?: AbortSignal | Abort } = {}) => ({
  method: init.method ?? "GET",
  path,
  headers: new Headers(init.headers ?? { host: "fn.test" }),
  body: init.body ?? null,
  ...(init.signal ? { signal: init.signal } : {}),
});

function serve(fetch: (req: Request) => Response | Promise<Response>, path = sock()) {
  const server = Bun.serve({ unix: path, fetch });
  return { server, path, [Symbol.asyncDispose]: () => server.stop(true) };
}

/** A raw Unix socket server speaking HTTP by hand, counting connections. */
function raw(onRequest: (s: Socket<{ buf: string; served: number }>, head: string) => void, path = sock("raw.sock")) {
  let connections = 0;
  const listener = Bun.listen<{ buf: string; served: number }>({
    unix: path,
    socket: {
      open(s) {
        connections++;
        s.data = { buf: "", served: 0 };
      },
      data(s, chunk) {
        s.data.buf += chunk.toString("latin1");
        for (let end = s.data.buf.indexOf("\r\n\r\n"); end >= 0; end = s.data.buf.indexOf("\r\n\r\n")) {
          const head = s.data.buf.slice(0, end);
          s.data.buf = s.data.buf.slice(end + 4);
          onRequest(s, head);
        }
      },
    },
  });
  return { path, connections: () => connections, [Symbol.dispose]: () => listener.stop(true) };
}

function bytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + (i >> 10)) & 0xff;
  return b;
}

describe("UpstreamPool", () => {
  test("GET and POST round trips, headers both ways", async () => {
    await using s = serve(async (req) => {
      const body = req.method === "POST" ? await req.text() : "";
      return new Response(`${req.method} ${new URL(req.url).pathname}${new URL(req.url).search} ${req.headers.get("x-a")} ${body}`, {
        headers: [
          ["x-multi", "1"],
          ["set-cookie", "a=1"],
          ["set-cookie", "b=2"],
        ],
      });
    });
    using pool = new UpstreamPool();
    const r1 = await pool.request(s.path, get("/p?q=1", { headers: { "x-a": "A" } }));
    expect(r1.status).toBe(200);
    expect(await r1.text()).toBe("GET /p?q=1 A ");
    expect(r1.headers.getSetCookie()).toEqual(["a=1", "b=2"]);
    expect(r1.headers.get("connection")).toBeNull();
    const r2 = await pool.request(s.path, get("/x", { method: "POST", headers: { "x-a": "B" }, body: new TextEncoder().encode("hello") }));
    expect(await r2.text()).toBe("POST /x B hello");
    const stream = new Blob(["strea", "med"]).stream();
    const r3 = await pool.request(s.path, get("/y", { method: "PUT", body: stream }));
    expect(await r3.text()).toBe("PUT /y null ");
    const r4 = await pool.request(s.path, get("/z", { method: "POST" }));
    expect(await r4.text()).toBe("POST /z null ");
  });

  test("a streamed POST body is sent whole (chunked and with a content-length)", async () => {
    await using s = serve(async (req) => new Response(`${req.headers.get("transfer-encoding")}:${(await req.text()).length}`));
    using pool = new UpstreamPool();
    const chunks = (): ReadableStream<Uint8Array> => new Blob(["abc", "defg", "h"]).stream();
    expect(await (await pool.request(s.path, get("/", { method: "POST", body: chunks() }))).text()).toBe("chunked:8");
    const r = await pool.request(s.path, get("/", { method: "POST", headers: { "content-length": "8" }, body: chunks() }));
    expect(await r.text()).toBe("null:8");
  });

  test("4 MB bodies both ways", async () => {
    const big = bytes(4 * 1024 * 1024);
    await using s = serve(async (req) => {
      if (req.method === "GET") return new Response(big);
      const got = new Uint8Array(await req.arrayBuffer());
      return new Response(String(got.length === big.length && Buffer.compare(got, big) === 0));
    });
    using pool = new UpstreamPool();
    const down = await pool.send(s.path, get("/"));
    expect(down.body).toBeInstanceOf(ReadableStream);
    const got = new Uint8Array(await new Response(down.body).arrayBuffer());
    expect(Buffer.compare(got, big)).toBe(0);
    const up = await pool.request(s.path, get("/", { method: "POST", body: new Blob([big]).stream() }));
    expect(await up.text()).toBe("true");
    const upBytes = await pool.request(s.path, get("/", { method: "POST", body: big }));
    expect(await upBytes.text()).toBe("true");
  });

  test("a small body of known length comes whole, in bytes", async () => {
    await using s = serve(() => new Response("x".repeat(100_000)));
    using pool = new UpstreamPool();
    const r = await pool.send(s.path, get("/"));
    expect(r.body).toBeInstanceOf(Uint8Array);
    expect((r.body as Uint8Array).length).toBe(100_000);
  });

  test("a chunked response streams in order, before it ends", async () => {
    let next: (() => void) | undefined;
    const gate = (): Promise<void> => new Promise((resolve) => (next = resolve));
    let served = 0;
    await using s = serve(() =>
      served++ > 0
        ? new Response("again")
        : new Response(
          new ReadableStream<string>({
            async start(c) {
              for (let i = 0; i < 5; i++) {
                c.enqueue(`part${i};`);
                await gate();
              }
              c.close();
            },
          }),
        ),
    );
    using pool = new UpstreamPool();
    const r = await pool.send(s.path, get("/"));
    expect(r.headers.get("transfer-encoding")).toBeNull();
    expect(r.body).toBeInstanceOf(ReadableStream);
    const reader = (r.body as ReadableStream<Uint8Array>).getReader();
    let text = "";
    const dec = new TextDecoder();
    for (;;) {
      const c = await reader.read();
      if (c.done) break;
      text += dec.decode(c.value);
      next?.();
    }
    expect(text).toBe("part0;part1;part2;part3;part4;");
    // The connection went back to the pool after the terminating chunk.
    expect(await (await pool.request(s.path, get("/"))).text()).toBe("again");
    expect(pool.size).toBe(1);
  });

  test("HEAD and 204 have no body; 304 too; an interim 100 is skipped", async () => {
    using r = raw((s, head) => {
      if (head.startsWith("GET /100")) s.write("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
      else if (head.startsWith("GET /304")) s.write("HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n");
      else if (head.startsWith("HEAD")) s.write("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
      else s.write("HTTP/1.1 204 No Content\r\n\r\n");
    });
    using pool = new UpstreamPool();
    const h = await pool.send(r.path, get("/", { method: "HEAD" }));
    expect([h.status, h.body, h.headers.get("content-length")]).toEqual([200, null, "5"]);
    const n = await pool.send(r.path, get("/204"));
    expect([n.status, n.body]).toEqual([204, null]);
    const m = await pool.send(r.path, get("/304"));
    expect([m.status, m.body, m.statusText]).toEqual([304, null, "Not Modified"]);
    const c = await pool.request(r.path, get("/100"));
    expect([c.status, await c.text()]).toEqual([200, "ok"]);
    expect(r.connections()).toBe(1);
  });

  test("keeps connections alive and reuses them", async () => {
    using r = raw((s) => void s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    using pool = new UpstreamPool();
    for (let i = 0; i < 5; i++) expect(await (await pool.request(r.path, get("/"))).text()).toBe("ok");
    expect(r.connections()).toBe(1);
    // Concurrent requests open more; they are all reused afterwards.
    await Promise.all([1, 2, 3].map(async () => (await pool.request(r.path, get("/"))).text()));
    const opened = r.connections();
    expect(opened).toBe(3);
    await Promise.all([1, 2, 3].map(async () => (await pool.request(r.path, get("/"))).text()));
    expect(r.connections()).toBe(opened);
    expect(pool.size).toBe(3);
    pool.closeAll(r.path);
    expect(pool.size).toBe(0);
  });

  test("Connection: close and read-until-close bodies are not reused", async () => {
    using r = raw((s, head) => {
      if (head.startsWith("GET /close")) s.write("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na");
      else {
        s.write("HTTP/1.1 200 OK\r\n\r\nuntil ");
        s.end("close");
      }
    });
    using pool = new UpstreamPool();
    expect(await (await pool.request(r.path, get("/close"))).text()).toBe("a");
    expect(await (await pool.request(r.path, get("/eof"))).text()).toBe("until close");
    expect(await (await pool.request(r.path, get("/close"))).text()).toBe("a");
    expect(r.connections()).toBe(3);
  });

  /** A server that hangs up, unanswered, on the second request of each connection; `seen` lists the methods it got. */
  function hangsUpOnSecond() {
    const seen: string[] = [];
    const server = raw((s, head) => {
      seen.push(head.slice(0, head.indexOf(" ")));
      if (s.data.served++ === 1) {
        s.terminate();
        return;
      }
      s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    });
    return Object.assign(server, { seen });
  }

  test("a connection the server closed between requests is retried once on a fresh one", async () => {
    using r = hangsUpOnSecond();
    using pool = new UpstreamPool();
    expect(await (await pool.request(r.path, get("/"))).text()).toBe("ok");
    expect(await (await pool.request(r.path, get("/"))).text()).toBe("ok");
    expect(r.connections()).toBe(2);
    expect(r.seen.length).toBe(3);
    // A streamed body is never replayed: 502.
    const err = await pool.request(r.path, get("/", { method: "POST", body: new Blob(["x"]).stream() })).catch((e: unknown) => e);
    expect(isForgeError(err) && err.status).toBe(502);
  });

  test("a POST whose reused connection is closed unanswered is never sent again (RFC 9110 §9.2.2)", async () => {
    using r = hangsUpOnSecond();
    using pool = new UpstreamPool();
    expect(await (await pool.request(r.path, get("/"))).text()).toBe("ok");
    const err = await pool.request(r.path, get("/pay", { method: "POST", body: new TextEncoder().encode("1 EUR") })).catch((e: unknown) => e);
    expect(isForgeError(err) && err.status).toBe(502);
    // Sent once: the server saw GET, then the POST a single time.
    expect(r.seen).toEqual(["GET", "POST"]);
  });

  test("a server dying mid-response errors the request, or the body after the head", async () => {
    using r = raw((s, head) => {
      if (head.startsWith("GET /small")) s.write("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
      else s.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n");
      s.terminate();
    });
    using pool = new UpstreamPool();
    const err = await pool.send(r.path, get("/small")).catch((e: unknown) => e);
    expect(isForgeError(err) && err.status).toBe(502);
    const res = await pool.request(r.path, get("/stream"));
    expect(res.status).toBe(200);
    expect(await res.text().catch((e: unknown) => (isForgeError(e) ? e.status : e))).toBe(502);
    const gone = await pool.send(sock("nobody.sock"), get("/")).catch((e: unknown) => e);
    expect(isForgeError(gone) && gone.status).toBe(502);
  });

  test("abort rejects with the signal's reason and closes the connection", async () => {
    let closed = 0;
    const ac = new AbortController();
    const reason = new DOMException("too slow", "TimeoutError");
    // The request is aborted once the server has it, and never answered.
    const listener = Bun.listen({ unix: sock("hang.sock"), socket: { data: () => ac.abort(reason), close: () => void closed++ } });
    try {
      using pool = new UpstreamPool();
      const err = await pool.send(sock("hang.sock"), get("/", { signal: ac.signal })).catch((e: unknown) => e);
      expect(err).toBe(reason);
      await until(() => closed === 1);
      expect(pool.size).toBe(0);
      expect(await pool.send(sock("hang.sock"), get("/", { signal: ac.signal })).catch((e: unknown) => e)).toBe(reason);
    } finally {
      listener.stop(true);
    }
  });

  test("an Abort (no AbortSignal) cancels like a signal", async () => {
    const abort = new Abort();
    const listener = Bun.listen({ unix: sock("hang2.sock"), socket: { data: () => abort.abort("late") } });
    try {
      using pool = new UpstreamPool();
      expect(await pool.send(sock("hang2.sock"), get("/", { signal: abort })).catch((e: unknown) => e)).toBe("late");
      expect(abort.handler).toBeUndefined();
    } finally {
      listener.stop(true);
    }
  });

  test("abort after the head errors the body stream", async () => {
    using r = raw((s) => void s.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"));
    using pool = new UpstreamPool();
    const ac = new AbortController();
    const res = await pool.request(r.path, get("/", { signal: ac.signal }));
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe("abc");
    ac.abort(new Error("stop"));
    expect(((await reader.read().catch((e: unknown) => e)) as Error).message).toBe("stop");
  });

  test("only end-to-end headers go to the instance: hop-by-hop ones and those Connection names are cut, but Host and forge's own", async () => {
    let got = "";
    using r = raw((s, head) => {
      got = head;
      s.write("HTTP/1.1 204 No Content\r\n\r\n");
    });
    using pool = new UpstreamPool();
    const headers = {
      host: "fn.test",
      connection: "x-secret, host, x-forge-request-id",
      "x-secret": "s",
      "x-forge-request-id": "r1",
      "x-plain": "p",
      te: "trailers",
      trailer: "x-sum",
      upgrade: "h2c",
      "keep-alive": "timeout=5",
      "proxy-connection": "keep-alive",
      "content-length": "99",
    };
    await pool.send(r.path, get("/", { method: "POST", headers, body: new TextEncoder().encode("hi") }));
    const lines = got.split("\r\n").slice(1).sort();
    expect(lines).toEqual(["content-length: 2", "host: fn.test", "x-forge-request-id: r1", "x-plain: p"]);
  });

  test("the reply carries end-to-end headers only; content-length stays", async () => {
    using r = raw((s) => void s.write("HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\ntrailer: x-sum\r\nupgrade: h2c\r\nconnection: upgrade\r\nx-kept:  1 \r\ncontent-length: 2\r\n\r\nok"));
    using pool = new UpstreamPool();
    const reply = await pool.send(r.path, get("/"));
    expect([...reply.headers]).toEqual([
      ["content-length", "2"],
      ["x-kept", "1"],
    ]);
    expect(pool.size).toBe(1); // reused: "upgrade" is no close
  });

  test("a response head and its interim 100 arriving a byte at a time are read whole", async () => {
    const answer = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello";
    using r = raw((s) => {
      void (async () => {
        for (const c of answer) {
          s.write(c);
          await Bun.sleep(0);
        }
      })();
    });
    using pool = new UpstreamPool();
    const res = await pool.request(r.path, get("/"));
    expect([res.status, res.headers.get("x-a"), await res.text()]).toEqual([200, "1", "hello"]);
    expect(await (await pool.request(r.path, get("/"))).text()).toBe("hello");
    expect(r.connections()).toBe(1);
  });

  describe("an instance's answer is checked as strictly as the gateway checks it", () => {
    /** Answers to GET /<name>; GET /ok answers well. */
    const answers: Record<string, string> = {
      both: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "bare-lf": "HTTP/1.1 200 OK\r\nx-a: 1\nContent-Length: 2\r\n\r\nok",
      "two-lengths": "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
      "bad-length": "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
      "not-chunked": "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
      folded: "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n",
      "space-before-colon": "HTTP/1.1 200 OK\r\nx-a : 1\r\ncontent-length: 0\r\n\r\n",
      status: "HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
      "switching-protocols": "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
      "not-http": "SSH-2.0-OpenSSH_9.6\r\n\r\n",
      ok: "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    };
    function strictServer() {
      const seen: string[] = [];
      const server = raw((s, head) => {
        const name = head.slice(5, head.indexOf(" ", 5));
        seen.push(name);
        s.write(answers[name] ?? "");
      });
      return Object.assign(server, { seen });
    }

    test("a malformed head is a 502 bad_response whose cause is a MalformedResponse, never retried", async () => {
      using r = strictServer();
      using pool = new UpstreamPool();
      for (const name of Object.keys(answers).filter((n) => n !== "ok")) {
        // On a kept-alive connection, where a broken one would be retried for a GET.
        expect(await (await pool.request(r.path, get("/ok"))).text()).toBe("ok");
        const err = await pool.send(r.path, get(`/${name}`)).catch((e: unknown) => e);
        expect([name, isForgeError(err) && err.code, isForgeError(err) && err.status]).toEqual([name, ErrorCode.BadResponse, 502]);
        expect((err as Error).cause).toBeInstanceOf(MalformedResponse);
        // The connection is out of step: closed, not pooled.
        expect(pool.size).toBe(0);
      }
      // Each request reached the instance once.
      expect(r.seen.filter((n) => n !== "ok")).toEqual(Object.keys(answers).filter((n) => n !== "ok"));
    });

    test("broken chunk framing after the head errors the body with a bad_response", async () => {
      const cases = [
        "3\r\nabcXY0\r\n\r\n", // no CRLF after the data
        "3\nabc\r\n0\r\n\r\n", // a bare LF after the size
        "10000000000000003\r\nabc\r\n0\r\n\r\n", // 17 hex digits
        "3\r\nabc\r\n0\r\nnot a trailer\r\n\r\n",
      ];
      using r = raw((s, head) => void s.write(`HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n${cases[Number(head.slice(5, 6))]}`));
      using pool = new UpstreamPool();
      for (let i = 0; i < cases.length; i++) {
        const res = await pool.request(r.path, get(`/${i}`));
        expect(res.status).toBe(200);
        const err = await res.text().catch((e: unknown) => e);
        expect([i, isForgeError(err) && err.code]).toEqual([i, ErrorCode.BadResponse]);
      }
      expect(pool.size).toBe(0);
    });
  });
});
