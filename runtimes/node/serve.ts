/**
 * The shim's server on Node.js: what Bun.serve is to the shim on Bun. A node:http server on
 * the instance's Unix socket (or $PORT) turns each request into a fetch `Request`, hands it
 * to the shim's handler and writes the `Response` back, streaming its body as it comes.
 *
 * Loaded by runtimes/js/shim.ts only when it runs on Node (the node shim is that file
 * bundled for Node by src/build/node-shim.ts), so it may import node: builtins freely.
 *
 * What it keeps of Bun.serve's behaviour, which forge's data path relies on:
 * - no timeouts of its own: forge bounds a request upstream, and kept-alive connections from
 *   forge must not be cut after Node's default 5 s idle;
 * - heads up to forge's own limit (64 KiB) pass (Node's default is 16 KiB);
 * - repeated request headers arrive joined with ", " (Headers.append), as Bun hands them over.
 * What it does not: a client that goes away does not abort `request.signal` (as on Workers;
 * an AbortController per request cost ~10% of a warm request), and WebSocket upgrades get a
 * 501: the node runtime does not serve WebSockets yet.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { unlinkSync } from "node:fs";
import type { Socket } from "node:net";
import { Readable } from "node:stream";

export interface NodeServeOptions {
  /** Unix socket path; absent: TCP on `port`. */
  unix?: string;
  port?: number;
  fetch: (request: Request) => Response | Promise<Response>;
  /** A handler that throws or rejects: the answer to send instead. */
  error: (err: unknown) => Response;
  /**
   * Whether the body is whole rather than a stream, so that it goes out with a Content-Length
   * in one write: its source itself when the shim kept it (a string or bytes: the body stream
   * is never read), true when it must be read first, false for a stream.
   */
  wholeBody: (response: Response) => string | Uint8Array | boolean;
}

/** The members of Bun's Server the shim uses. */
export interface NodeServer {
  upgrade(request: Request, options?: unknown): boolean;
  publish(topic: string, data: unknown): number;
  subscriberCount(topic: string): number;
  readonly pendingRequests: number;
  reload(options: unknown): void;
  stop(closeActive?: boolean): Promise<void>;
}

/** forge's largest request head (src/dataplane/http1/request-head.ts), plus room. */
const MAX_HEADER_BYTES = 80 * 1024;

const NO_BODY = new Set(["GET", "HEAD"]);

const UPGRADE_REFUSED =
  "HTTP/1.1 501 Not Implemented\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ";
const UPGRADE_BODY = JSON.stringify({
  error: { code: "websocket_unsupported", message: "the node runtime does not serve WebSockets yet", hint: 'deploy with "runtime": "bun" for WebSockets' },
});

export async function serveNode(options: NodeServeOptions): Promise<NodeServer> {
  let pending = 0;
  const server = createServer(
    { maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: 0, headersTimeout: 0, keepAliveTimeout: 0, noDelay: true },
    (req, res) => {
      pending++;
      res.once("close", () => void pending--);
      void answer(req, res, options);
    },
  );
  // keepAliveTimeout in the options is Node 22's; on 20 it is a property.
  server.keepAliveTimeout = 0;
  // No count of headers (Node keeps 1,023 and drops the rest silently, forge's own among
  // them, which come last): the head is bounded by maxHeaderSize, as forge's gateway bounds it.
  server.maxHeadersCount = 0;
  server.on("upgrade", (_req: IncomingMessage, socket: Socket) => {
    socket.end(UPGRADE_REFUSED + Buffer.byteLength(UPGRADE_BODY) + "\r\n\r\n" + UPGRADE_BODY);
  });
  server.on("clientError", (_err, socket: Socket) => {
    if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    else socket.destroy();
  });
  await listen(server, options);
  return {
    upgrade(): boolean {
      throw new TypeError("server.upgrade(): the node runtime does not serve WebSockets yet; deploy with runtime bun");
    },
    publish: () => 0,
    subscriberCount: () => 0,
    get pendingRequests() {
      return pending;
    },
    reload(): void {},
    stop(closeActive?: boolean): Promise<void> {
      if (closeActive) server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

async function listen(server: ReturnType<typeof createServer>, options: NodeServeOptions): Promise<void> {
  const attempt = () =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      const done = () => {
        server.off("error", reject);
        resolve();
      };
      if (options.unix === undefined) server.listen(options.port ?? 8080, "0.0.0.0", done);
      else server.listen(options.unix, done);
    });
  if (options.unix === undefined) return attempt();
  // Socket mode 0666: forge may run as another uid than the instance's user.
  const umask = process.umask(0o111);
  try {
    await attempt().catch((err: NodeJS.ErrnoException) => {
      if (err.code !== "EADDRINUSE") throw err;
      // A socket file left by an earlier life of this instance (a restarted container).
      unlinkSync(options.unix as string);
      return attempt();
    });
  } finally {
    process.umask(umask);
  }
}

/**
 * Bodies of a declared length up to this are read whole before the Request is made: a web
 * stream over the node stream (Readable.toWeb) costs ~1 ms a request on a fresh process;
 * larger and chunked bodies stream.
 */
const WHOLE_BODY_BYTES = 64 * 1024;

/** The declared length of a small body to read whole, else undefined (none, chunked, or large). */
function smallBody(req: IncomingMessage): number | undefined {
  const declared = req.headers["content-length"];
  if (declared === undefined || req.headers["transfer-encoding"] !== undefined || NO_BODY.has(req.method ?? "GET")) return undefined;
  const length = Number(declared);
  return length > 0 && length <= WHOLE_BODY_BYTES ? length : undefined;
}

/** A small body, whole (the client's bytes as they came; short if it went away). */
function readWhole(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.once("end", () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)));
    req.once("error", reject);
  });
}

/** The fetch Request for a node request: same method, target, headers and body (streamed, or `whole`). */
function toRequest(req: IncomingMessage, whole?: Buffer): Request {
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) headers.append(raw[i] as string, raw[i + 1] as string);
  const url = `http://${req.headers.host || "localhost"}${req.url ?? "/"}`;
  const method = req.method ?? "GET";
  if (whole !== undefined) return new Request(url, { method, headers, body: whole });
  const hasBody = !NO_BODY.has(method) && (req.headers["transfer-encoding"] !== undefined || Number(req.headers["content-length"] ?? 0) > 0);
  return new Request(url, {
    method,
    headers,
    ...(hasBody ? { body: Readable.toWeb(req) as ReadableStream<Uint8Array>, duplex: "half" } : {}),
  } as RequestInit);
}

async function answer(req: IncomingMessage, res: ServerResponse, options: NodeServeOptions): Promise<void> {
  let response: Response;
  try {
    const small = smallBody(req);
    response = await options.fetch(toRequest(req, small === undefined ? undefined : await readWhole(req)));
  } catch (err) {
    response = options.error(err);
  }
  try {
    await write(res, response, options, req.method === "HEAD");
  } catch (err) {
    // Nothing sent yet (a Response the head cannot be made of: Response.error(), a bad
    // status): the shim's 500, as Bun.serve's error handler gives. Else the client went away
    // or the body failed mid-stream (the shim logged why): cut it.
    if (res.headersSent) return void res.destroy();
    await write(res, options.error(err), options, false).catch(() => res.destroy());
  }
}

/**
 * Headers that frame the message on this connection: the server sets them from the body it
 * sends, as Bun.serve does, never from the function's (a length copied from a compressed
 * upstream, or counted in characters, would cut the body short or leave the next response
 * on the connection to be read as this one's rest).
 */
const FRAMING = new Set(["content-length", "transfer-encoding", "connection", "keep-alive"]);

/** Statuses whose responses carry no body (RFC 9110 §6.4.1). */
function bodiless(status: number): boolean {
  return status < 200 || status === 204 || status === 304;
}

function headLines(response: Response): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of response.headers) {
    if (name === "set-cookie" || FRAMING.has(name)) continue;
    out[name] = value;
  }
  const cookies = response.headers.getSetCookie();
  if (cookies.length > 0) out["set-cookie"] = cookies;
  return out;
}

const EMPTY = Buffer.alloc(0);

/**
 * Writes a Response. Bodies go out as Buffers: node writes the head in the encoding of the
 * first body write, so a string would turn a header's bytes above 0x7f (kept as latin1) into
 * UTF-8 pairs.
 */
async function write(res: ServerResponse, response: Response, options: NodeServeOptions, head: boolean): Promise<void> {
  const status = response.status;
  const statusText = response.statusText || undefined;
  const headers = headLines(response);
  const body = response.body;
  if (body === null || head || bodiless(status)) {
    // HEAD: the length a GET would have, when it is known without reading a stream.
    if (head && body !== null && !bodiless(status)) {
      const whole = options.wholeBody(response);
      const declared = response.headers.get("content-length");
      if (typeof whole === "string") headers["content-length"] = String(Buffer.byteLength(whole));
      else if (whole === true) headers["content-length"] = String((await response.arrayBuffer()).byteLength);
      else if (declared !== null && /^\d{1,15}$/.test(declared)) headers["content-length"] = declared;
    }
    res.writeHead(status, statusText, headers);
    if (body !== null && !response.bodyUsed) await body.cancel().catch(() => {});
    res.end();
    return;
  }
  const whole = options.wholeBody(response);
  if (whole !== false) {
    const bytes = typeof whole === "string" ? Buffer.from(whole) : Buffer.from(await response.arrayBuffer());
    headers["content-length"] = String(bytes.byteLength);
    res.writeHead(status, statusText, headers);
    res.end(bytes);
    return;
  }
  res.writeHead(status, statusText, headers);
  // The head goes out now (a stream's first bytes may be long in coming: SSE), as bytes.
  res.write(EMPTY);
  await pump(res, body.getReader());
}

/**
 * Copies a body stream to the client with backpressure. A client that goes away cancels the
 * stream at once (a long poll or an event stream waiting for news stops), not at its next chunk.
 */
/** What pump needs of a body stream's reader. */
interface ChunkReader {
  read(): Promise<{ done: boolean; value?: Uint8Array }>;
  cancel(reason?: unknown): Promise<void>;
}

async function pump(res: ServerResponse, reader: ChunkReader): Promise<void> {
  let gone = false;
  let wake: (() => void) | undefined;
  const onClose = (): void => {
    gone = true;
    wake?.();
    void reader.cancel(new Error("the client went away")).catch(() => {});
  };
  const onDrain = (): void => wake?.();
  res.once("close", onClose);
  res.on("drain", onDrain);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done || gone) break;
      if (value !== undefined && !res.write(value)) {
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        if (gone) break;
      }
    }
    if (!gone) res.end();
  } catch (err) {
    await reader.cancel(err).catch(() => {});
    throw err;
  } finally {
    res.off("close", onClose);
    res.off("drain", onDrain);
  }
}
