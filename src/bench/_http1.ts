/**
 * A minimal HTTP/1.1 client connection for the load generator: one request at a time on
 * one kept-alive socket (TCP, TLS or Unix), the same precomputed request bytes each time,
 * the response read and discarded as it arrives.
 *
 * Why not fetch: Bun's fetch keeps at most 64 idle connections per host; at a higher
 * concurrency it closes and reopens sockets on nearly every request (measured on Bun
 * 1.4.5: 96 workers, 20 000 requests, ~2 800 connections), so a "keep-alive" benchmark
 * would measure connection set-up. Owning the socket also lets errors be told apart by
 * kind (connect, reset, timeout) and connections be counted.
 */
import type { Socket } from "bun";

export type ErrorKind = "connect" | "timeout" | "reset" | "protocol";

/** A request that got no complete response, and why. */
export class TransportError extends Error {
  override readonly name = "TransportError";
  constructor(
    readonly kind: ErrorKind,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

export type Target = { hostname: string; port: number; tls?: boolean } | { unix: string };

/** Longest response head (status line and headers) accepted. */
const MAX_HEAD = 64 * 1024;
const CRLF = Buffer.from("\r\n");
const CRLFCRLF = Buffer.from("\r\n\r\n");

type State = "idle" | "head" | "length" | "chunk-size" | "chunk-data" | "chunk-end" | "trailers" | "until-close";

interface Pending {
  resolve(status: number): void;
  reject(err: TransportError): void;
  head: boolean;
}

export class Http1Connection {
  private socket: Socket<Http1Connection> | undefined;
  private state: State = "idle";
  private pending: Pending | undefined;
  private leftover: Buffer | undefined;
  private unsent: Uint8Array | undefined;
  private remaining = 0;
  private status = 0;
  private keepAlive = true;
  private closedFlag = false;
  /** performance.now() when the request in flight was sent (for a timeout watchdog). */
  busySince: number | undefined;

  private constructor() {}

  /** Opens a connection; rejects with a TransportError of kind "connect". */
  static async open(target: Target): Promise<Http1Connection> {
    const conn = new Http1Connection();
    try {
      const socket =
        "unix" in target
          ? await Bun.connect({ unix: target.unix, socket: HANDLERS, data: conn })
          : await Bun.connect({ hostname: target.hostname, port: target.port, socket: HANDLERS, data: conn, ...(target.tls ? { tls: true } : {}) });
      socket.setNoDelay(true);
      conn.socket = socket;
      if (conn.closedFlag) throw new Error("the connection closed as it opened");
      return conn;
    } catch (cause) {
      const where = "unix" in target ? target.unix : `${target.hostname}:${target.port}`;
      throw new TransportError("connect", `cannot connect to ${where}: ${describe(cause)}`, { cause });
    }
  }

  /** False once the socket closed or the server asked to close it. */
  get reusable(): boolean {
    return !this.closedFlag && this.keepAlive && this.state === "idle";
  }

  /**
   * Sends one request (whole, precomputed bytes) and resolves with the response status
   * once the whole response body has arrived. `head` tells a HEAD request (no body follows).
   */
  send(request: Uint8Array, head = false): Promise<number> {
    if (this.pending || this.closedFlag || !this.socket) {
      return Promise.reject(new TransportError("reset", "the connection is closed or busy"));
    }
    const socket = this.socket;
    return new Promise<number>((resolve, reject) => {
      this.pending = { resolve, reject, head };
      this.busySince = performance.now();
      this.state = "head";
      this.status = 0;
      this.keepAlive = true;
      const written = socket.write(request);
      if (written < 0) this.fail(new TransportError("reset", "the connection closed while sending"));
      else if (written < request.byteLength) this.unsent = request.subarray(written);
    });
  }

  /** Closes the socket; a request in flight fails with `err`. */
  destroy(err?: TransportError): void {
    if (err) this.fail(err);
    this.closedFlag = true;
    this.socket?.terminate();
  }

  // --- socket events (through HANDLERS) ---

  onData(chunk: Buffer): void {
    if (!this.pending) {
      // Bytes nobody asked for: the stream is out of step, never reuse it.
      this.destroy();
      return;
    }
    let buf = chunk;
    if (this.leftover) {
      buf = Buffer.concat([this.leftover, chunk]);
      this.leftover = undefined;
    }
    try {
      this.parse(buf);
    } catch (err) {
      this.destroy(err instanceof TransportError ? err : new TransportError("protocol", describe(err)));
    }
  }

  onDrain(): void {
    const rest = this.unsent;
    if (!rest || !this.socket) return;
    const written = this.socket.write(rest);
    this.unsent = written >= rest.byteLength ? undefined : rest.subarray(Math.max(0, written));
  }

  onClose(error?: Error): void {
    this.closedFlag = true;
    if (!this.pending) return;
    if (this.state === "until-close" && !error) {
      this.finish();
      return;
    }
    this.fail(new TransportError("reset", `the server closed the connection${error ? `: ${describe(error)}` : " before the response was complete"}`));
  }

  // --- internal ---

  private parse(buf: Buffer): void {
    let pos = 0;
    while (this.pending) {
      switch (this.state) {
        case "head": {
          const end = buf.indexOf(CRLFCRLF, pos);
          if (end < 0) return this.keep(buf, pos, MAX_HEAD, "response head");
          this.readHead(buf.toString("latin1", pos, end));
          pos = end + 4;
          break;
        }
        case "length":
        case "chunk-data":
        case "chunk-end": {
          const take = Math.min(this.remaining, buf.length - pos);
          pos += take;
          this.remaining -= take;
          if (this.remaining > 0) return;
          if (this.state === "length") this.finish();
          else if (this.state === "chunk-data") {
            this.state = "chunk-end";
            this.remaining = 2;
          } else this.state = "chunk-size";
          break;
        }
        case "chunk-size": {
          const end = buf.indexOf(CRLF, pos);
          if (end < 0) return this.keep(buf, pos, 1024, "chunk size line");
          const line = buf.toString("latin1", pos, end);
          const size = Number.parseInt(line.split(";", 1)[0] ?? "", 16);
          if (!Number.isFinite(size) || size < 0) throw new TransportError("protocol", `bad chunk size ${JSON.stringify(line.slice(0, 20))}`);
          pos = end + 2;
          if (size === 0) this.state = "trailers";
          else {
            this.state = "chunk-data";
            this.remaining = size;
          }
          break;
        }
        case "trailers": {
          const end = buf.indexOf(CRLF, pos);
          if (end < 0) return this.keep(buf, pos, MAX_HEAD, "trailers");
          const empty = end === pos;
          pos = end + 2;
          if (empty) this.finish();
          break;
        }
        case "until-close":
          return;
        case "idle":
          return;
      }
    }
  }

  private keep(buf: Buffer, pos: number, limit: number, what: string): void {
    if (buf.length - pos > limit) throw new TransportError("protocol", `${what} longer than ${limit} bytes`);
    this.leftover = buf.subarray(pos);
  }

  private readHead(head: string): void {
    // Hot path (once a response): no split, no regex; header names are case-insensitive.
    if (!head.startsWith("HTTP/1.") || head.length < 12) throw new TransportError("protocol", `not an HTTP/1 response: ${JSON.stringify(head.slice(0, 40))}`);
    const status = Number(head.slice(9, 12));
    if (!Number.isInteger(status) || status < 100) throw new TransportError("protocol", `bad status line: ${JSON.stringify(head.slice(0, 40))}`);
    if (status >= 100 && status < 200 && status !== 101) return; // informational: the real head follows
    const lower = head.toLowerCase();
    const lengthText = headerValue(lower, "content-length");
    const chunked = headerValue(lower, "transfer-encoding")?.includes("chunked") ?? false;
    const connection = headerValue(lower, "connection") ?? "";
    this.status = status;
    this.keepAlive = head.charCodeAt(7) === 49 /* HTTP/1.1 */ ? !connection.includes("close") : connection.includes("keep-alive");
    const pending = this.pending;
    if (pending?.head || status === 204 || status === 304) return this.finish();
    if (chunked) {
      this.state = "chunk-size";
    } else if (lengthText !== undefined) {
      const length = Number(lengthText);
      if (!Number.isSafeInteger(length) || length < 0 || lengthText === "") throw new TransportError("protocol", "bad content-length");
      this.remaining = length;
      if (length === 0) this.finish();
      else this.state = "length";
    } else {
      this.keepAlive = false;
      this.state = "until-close";
    }
  }

  private finish(): void {
    const pending = this.pending;
    this.pending = undefined;
    this.busySince = undefined;
    this.state = "idle";
    this.leftover = undefined;
    // A response that came before the whole request was sent leaves the stream out of step.
    if (!this.keepAlive || this.unsent) this.destroy();
    pending?.resolve(this.status);
  }

  private fail(err: TransportError): void {
    const pending = this.pending;
    this.pending = undefined;
    this.busySince = undefined;
    this.state = "idle";
    this.leftover = undefined;
    this.unsent = undefined;
    this.keepAlive = false;
    pending?.reject(err);
  }
}

/** Serializes a request once; every request of a run sends these same bytes. */
export function encodeRequest(method: string, path: string, headers: Record<string, string>, body?: Uint8Array): Uint8Array {
  let head = `${method} ${path} HTTP/1.1\r\n`;
  const seen = new Set<string>();
  for (const [name, value] of Object.entries(headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new TypeError(`header ${JSON.stringify(name)} holds a line break`);
    seen.add(name.toLowerCase());
    head += `${name}: ${value}\r\n`;
  }
  if (!seen.has("content-length") && (body || !["GET", "HEAD", "DELETE", "OPTIONS"].includes(method))) head += `content-length: ${body?.byteLength ?? 0}\r\n`;
  head += "\r\n";
  const headBytes = Buffer.from(head, "latin1");
  if (!body?.byteLength) return headBytes;
  const out = new Uint8Array(headBytes.byteLength + body.byteLength);
  out.set(headBytes, 0);
  out.set(body, headBytes.byteLength);
  return out;
}

/** The trimmed value of a header in a lower-cased head, or undefined. */
function headerValue(lowerHead: string, name: string): string | undefined {
  const at = lowerHead.indexOf(`\r\n${name}:`);
  if (at < 0) return undefined;
  const from = at + name.length + 3;
  const end = lowerHead.indexOf("\r\n", from);
  return lowerHead.slice(from, end < 0 ? undefined : end).trim();
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as Error & { code?: unknown }).code;
    return typeof code === "string" && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}

// One handler object for every socket: the per-socket state is the connection in `data`.
const HANDLERS = {
  data(socket: Socket<Http1Connection>, chunk: Buffer) {
    socket.data.onData(chunk);
  },
  drain(socket: Socket<Http1Connection>) {
    socket.data.onDrain();
  },
  close(socket: Socket<Http1Connection>, error?: Error) {
    socket.data.onClose(error);
  },
  error(socket: Socket<Http1Connection>, error: Error) {
    socket.data.destroy(new TransportError("reset", describe(error), { cause: error }));
  },
  connectError() {
    // Bun.connect rejects as well; open() turns that into a "connect" error.
  },
};
