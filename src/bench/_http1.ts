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
import { Accumulator } from "../dataplane/http1/accumulator.ts";
import { Framing } from "../dataplane/http1/framing.ts";
import { readResponseHead } from "./_response-head.ts";

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

/** Where a connection hands the outcome of each request (one way: it never reaches into its owner). */
export interface ResponseListener {
  /** The whole response arrived; `latencyNs` from the request's first byte written to the response's last byte read. */
  onResponse(status: number, latencyNs: number): void;
  /** The request got no complete response; the connection is no longer usable. */
  onError(err: TransportError): void;
}

/**
 * A response's body is framed by the gateway's own Framing (length, chunked, until close),
 * and a head arriving in pieces gathers in an Accumulator; the head is read by
 * readResponseHead. What neither can read (a bad head, a 101 to a request that asked for
 * no upgrade, broken chunks) counts as a "protocol" error.
 */
export class Http1Connection {
  private socket: Socket<Http1Connection> | undefined;
  /** Who waits for the response in flight (none: the connection is idle). */
  private pending: ResponseListener | undefined;
  /** Was the request in flight a HEAD (no body follows)? */
  private head = false;
  /** The head of the response in flight is in: bytes now go to `framing`. */
  private inBody = false;
  private readonly framing = new Framing();
  /** A head that came in pieces, so far. */
  private held: Buffer | undefined;
  private readonly accumulator = new Accumulator();
  private unsent: Uint8Array | undefined;
  private status = 0;
  private keepAlive = true;
  private closedFlag = false;
  /** Bun.nanoseconds() when the request in flight was sent (latency, and a timeout watchdog); 0 when idle. */
  sentAtNs = 0;

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
    return !this.closedFlag && this.keepAlive && !this.pending;
  }

  /**
   * Sends one request (whole, precomputed bytes); `listener` hears of its response once the
   * whole body has arrived, or of its failure. `head` tells a HEAD request (no body follows).
   * A callback rather than a promise a request: the promise, its resolution and the await cost
   * the generator ~1.5 us of CPU a request (measured against nginx, 2-core VM, Bun 1.4.5).
   */
  send(request: Uint8Array, head: boolean, listener: ResponseListener): void {
    if (this.pending || this.closedFlag || !this.socket) {
      listener.onError(new TransportError("reset", "the connection is closed or busy"));
      return;
    }
    this.pending = listener;
    this.head = head;
    this.inBody = false;
    this.status = 0;
    this.keepAlive = true;
    this.sentAtNs = Bun.nanoseconds();
    const written = this.socket.write(request);
    if (written < 0) this.fail(new TransportError("reset", "the connection closed while sending"));
    else if (written < request.byteLength) this.unsent = request.subarray(written);
  }

  /** Closes the socket; a request in flight fails with `err`. */
  destroy(err?: TransportError): void {
    if (err) this.fail(err);
    if (this.closedFlag) return;
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
    try {
      this.take(chunk);
    } catch (err) {
      // MalformedResponse, from the head or the framing: an answer the gateway would not take either.
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
    if (this.inBody && this.framing.mode === 3 /* until the server closes */ && !error) {
      this.finish();
      return;
    }
    this.fail(new TransportError("reset", `the server closed the connection${error ? `: ${describe(error)}` : " before the response was complete"}`));
  }

  // --- internal ---

  private take(chunk: Buffer): void {
    let buf = chunk;
    let pos = 0;
    if (!this.inBody) {
      buf = this.accumulator.append(this.held, chunk);
      const head = readResponseHead(buf);
      if (!head) {
        this.held = buf;
        return;
      }
      this.held = undefined;
      this.accumulator.reset();
      this.inBody = true;
      this.status = head.status;
      this.keepAlive = head.keepAlive;
      pos = head.bodyStart;
      if (this.head || head.status === 204 || head.status === 304) this.framing.byLength(0);
      else if (head.chunked) this.framing.chunked();
      else if (head.length >= 0) this.framing.byLength(head.length);
      else {
        this.framing.untilClose();
        this.keepAlive = false;
      }
    }
    const end = this.framing.feed(buf, pos);
    if (!this.framing.done) return;
    // Bytes past the end of the response were not asked for: the stream is out of step.
    if (end < buf.length) this.keepAlive = false;
    this.finish();
  }

  private finish(): void {
    const pending = this.pending;
    const latencyNs = Bun.nanoseconds() - this.sentAtNs;
    this.reset();
    // A response that came before the whole request was sent leaves the stream out of step.
    if (!this.keepAlive || this.unsent) this.destroy();
    pending?.onResponse(this.status, latencyNs);
  }

  private fail(err: TransportError): void {
    const pending = this.pending;
    this.reset();
    this.unsent = undefined;
    this.keepAlive = false;
    pending?.onError(err);
  }

  private reset(): void {
    this.pending = undefined;
    this.sentAtNs = 0;
    this.inBody = false;
    this.held = undefined;
    this.accumulator.reset();
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

export function describe(err: unknown): string {
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
