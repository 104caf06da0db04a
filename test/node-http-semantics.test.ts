/**
 * The node runtime's HTTP server (runtimes/node/serve.ts) against Bun.serve's: the same module
 * on both runtimes through a real forge (process driver), where a function's framing headers,
 * header bytes, a client walking away or a Response the head cannot be made of must give the
 * same answer on node as on bun (found by a hostile review of issue 14).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

const MODULE = `
const enc = new TextEncoder();
let quietOpen = 0;
let quietCancelled = 0;
export default {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      // A streamed body whose declared length is shorter than what follows (a proxy that
      // copied an upstream's content-length, a length counted in characters, not bytes).
      case "/short-length":
        return new Response(new ReadableStream({
          async start(c) {
            c.enqueue(enc.encode("hello"));
            await new Promise((r) => setTimeout(r, 400));
            c.enqueue(enc.encode("HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\ncontent-length: 6\\r\\n\\r\\nPWNED!"));
            c.close();
          },
        }), { headers: { "content-length": "5" } });
      // A whole body with a declared length longer than the body.
      case "/long-length":
        return new Response("hello", { headers: { "content-length": "10" } });
      // Framing is the server's business: a function naming a transfer-encoding (copied from
      // an upstream's headers, say) must not change how the body is framed or coded on the wire.
      case "/te-identity":
        return new Response("hello", { headers: { "transfer-encoding": "identity" } });
      case "/te-gzip":
        return new Response("hello", { headers: { "transfer-encoding": "gzip, chunked" } });
      case "/echo-header":
        return new Response("ok", { headers: { "x-out": request.headers.get("x-in") ?? "" } });
      case "/headers":
        return Response.json([...request.headers.keys()]);
      case "/text":
        return new Response("hello");
      case "/quiet":
        // One event, then nothing for a minute (long-poll / SSE waiting for news).
        return new Response(new ReadableStream({
          start(c) { quietOpen++; c.enqueue(enc.encode("data: first\\n\\n")); this.t = setTimeout(() => {}, 60_000); },
          cancel() { clearTimeout(this.t); quietOpen--; quietCancelled++; },
        }), { headers: { "content-type": "text/event-stream" } });
      case "/quiet-stats":
        return Response.json({ quietOpen, quietCancelled });
      case "/big": {
        let n = 0;
        return new Response(new ReadableStream({ pull(c) { if (n++ >= 640) return c.close(); c.enqueue(new Uint8Array(64 * 1024)); } }));
      }
      case "/error":
        return Response.error();
      case "/mark":
        console.error("mark " + url.search);
        return new Response("marked");
      default:
        return new Response("genuine answer for " + url.pathname);
    }
  },
};
`;

const RUNTIMES = ["bun", "node"] as const;
type Runtime = (typeof RUNTIMES)[number];

let forge: ForgeProcess;
const fns = tempDir("forge-review-node-");
const name = (rt: Runtime) => `rv-http-${rt}`;

beforeAll(async () => {
  forge = await startForge({ env: { FORGE_STEM_CELLS: "bun=1,node=1", FORGE_START_TIMEOUT: "20s" } });
  for (const rt of RUNTIMES) {
    const dir = join(fns, rt);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "index.mjs"), MODULE);
    // One instance: every request of a test meets the same instance (and its kept-alive connections).
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ runtime: rt, maxInstances: 1, timeoutMs: 8000 }));
    const r = await cli(forge, ["deploy", dir, "--name", name(rt)]);
    if (r.code !== 0) throw new Error(`deploy failed:\n${r.stdout}\n${r.stderr}`);
  }
}, 90_000);

afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
  fns[Symbol.dispose]();
});

/** One request on its own connection, raw bytes back (until the server closes, or `ms`). */
function raw(request: Uint8Array | string, ms = 4000): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = connect(forge.port, "127.0.0.1", () => socket.write(request));
    const timer = setTimeout(() => socket.destroy(), ms);
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
    socket.on("error", () => {});
  });
}

const bodyOf = (response: Buffer) => response.subarray(response.indexOf("\r\n\r\n") + 4).toString("latin1");

describe.each(RUNTIMES)("runtime %s", (rt) => {
  test("a response's wrong content-length never hands the rest of its body to another client", async () => {
    // Client A gets "hello" (the declared 5 bytes); client B asks 150 ms later, on the same
    // instance, and must get its own answer, not the bytes A's function wrote after the 5th.
    // A's answer is taken whole first; B then goes out at once, on the instance connection A
    // left, while A's function is still to write its late chunk (400 ms on).
    await (await forge.fn(name(rt), "/short-length")).arrayBuffer();
    const b = await raw(`GET /b-other-client HTTP/1.1\r\nhost: ${name(rt)}.localhost\r\nconnection: close\r\n\r\n`);
    expect(bodyOf(b)).toBe("genuine answer for /b-other-client");
  }, 15_000);

  test("a declared content-length longer than the body does not hang the client until the timeout", async () => {
    // The function's timeout is 8 s: a hang would be cut by this bound first, failing the test.
    const r = await forge.fn(name(rt), "/long-length", { signal: AbortSignal.timeout(6000) });
    expect(await r.text()).toBe("hello");
  }, 15_000);

  test("a transfer-encoding header set by the function does not break the response (502) or mislabel its body", async () => {
    const identity = await forge.fn(name(rt), "/te-identity");
    expect({ status: identity.status, body: await identity.text() }).toEqual({ status: 200, body: "hello" });
    // node: forge passes on "transfer-encoding: gzip, chunked" over a body that is not gzip
    const gzip = await raw(`GET /te-gzip HTTP/1.1\r\nhost: ${name(rt)}.localhost\r\nconnection: close\r\n\r\n`);
    expect(gzip.toString("latin1").toLowerCase()).not.toContain("gzip");
  });

  test("header bytes a function echoes come back as they came (no double UTF-8 encoding)", async () => {
    const head = Buffer.concat([
      Buffer.from(`GET /echo-header HTTP/1.1\r\nhost: ${name(rt)}.localhost\r\nconnection: close\r\nx-in: caf`, "latin1"),
      Buffer.from([0xc3, 0xa9]),
      Buffer.from("\r\n\r\n", "latin1"),
    ]);
    const response = await raw(head);
    const line = response
      .toString("latin1")
      .split("\r\n")
      .find((l) => l.toLowerCase().startsWith("x-out:"));
    // bytes "caf" c3 a9, as sent (node sends c3 83 c2 a9)
    expect(Buffer.from(line ?? "", "latin1").toString("hex")).toBe(Buffer.from("x-out: caf\xc3\xa9", "latin1").toString("hex"));
  });

  test("a request with many headers is refused (431, as on bun) or arrives whole: never without forge's own headers", async () => {
    const junk = Array.from({ length: 1100 }, (_, i) => `x-h${i}: v\r\n`).join("");
    const response = await raw(`GET /headers HTTP/1.1\r\nhost: ${name(rt)}.localhost\r\n${junk}connection: close\r\n\r\n`);
    const status = Number(response.toString("latin1").split(" ")[1]);
    if (status === 431) return;
    // node: the shim's server keeps the first ~1024 headers and drops the rest silently, forge's
    // own (appended last) among them: no x-forge-client-ip, and a request id forge never issued.
    const names = JSON.parse(bodyOf(response)) as string[];
    expect(names).toContain("x-forge-client-ip");
    expect(names).toContain("x-h1099");
  });

  test("HEAD answers with the content-length a GET would have", async () => {
    const r = await forge.fn(name(rt), "/text", { method: "HEAD" });
    expect(r.status).toBe(200);
    expect(r.headers.get("content-length")).toBe("5");
  });

  test("a stream the client walked away from is cancelled (its cancel() runs), as on Bun", async () => {
    const before = (await (await forge.fn(name(rt), "/quiet-stats")).json()) as { quietCancelled: number };
    const controller = new AbortController();
    const r = await forge.fn(name(rt), "/quiet", { signal: controller.signal });
    const reader = r.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toContain("first");
    controller.abort();
    await until(
      async () => ((await (await forge.fn(name(rt), "/quiet-stats")).json()) as { quietCancelled: number }).quietCancelled > before.quietCancelled,
      3000,
      "the stream's cancel() after the client left",
    );
  }, 15_000);

  test("a large streamed response leaves no MaxListenersExceededWarning in the function's logs", async () => {
    const r = await forge.fn(name(rt), "/big");
    expect((await r.arrayBuffer()).byteLength).toBe(640 * 64 * 1024);
    // A line written after it on the same stream (stderr): once it is in, a warning would be too.
    const mark = `?after-big-${crypto.randomUUID()}`;
    await (await forge.fn(name(rt), `/mark${mark}`)).text();
    const logsNow = async () => ((await (await forge.api(`/v1/functions/${name(rt)}/logs?limit=1000`)).json()) as { lines: { text: string }[] }).lines;
    await until(async () => (await logsNow()).some((l) => l.text === `mark ${mark}`), 10_000, "the marker line");
    const logs = { lines: await logsNow() };
    expect(logs.lines.filter((l) => l.text.includes("MaxListenersExceededWarning"))).toEqual([]);
  }, 15_000);

  test("Response.error() is the function's mistake (500), not an instance crash (502)", async () => {
    const r = await forge.fn(name(rt), "/error");
    expect(r.status).toBe(500);
  });
});
