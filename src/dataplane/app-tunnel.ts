/**
 * One request the gateway's fast path does not take (the control API, a chunked upload,
 * Expect, HTTP/1.0), carried to forge's Hono app (Bun.serve on a private Unix socket) and
 * its answer back, as bytes. The head goes as the gateway rewrote it, with `connection:
 * close`; the body is framed here, so nothing past it reaches the app; the answer's head is
 * marked `connection: close` (Bun.serve closes without saying so). Then the tunnel ends, and
 * the client's connection with it.
 */
import type { Socket } from "bun";
import { Framing } from "./http1/framing.ts";
import { concat } from "./http1/head.ts";
import { Outbox } from "./http1/outbox.ts";
import { parseResponseHead } from "./http1/response-head.ts";

/** The client connection a tunnel serves. */
export interface TunnelClient {
  /** Writes answer bytes to the client; false when some wait for it to read (the tunnel then pauses). */
  toClient(data: Uint8Array): boolean;
  /** The app took what was written: more of the body may be read from the client. */
  tunnelDrained(): void;
  /** The app's answer is over (or the app is gone). */
  tunnelClosed(): void;
  /** The app could not be reached. */
  tunnelFailed(err: unknown): void;
}

export class AppTunnel {
  private socket: Socket<AppTunnel> | undefined;
  private readonly out = new Outbox();
  private closed = false;
  /** The request's body still to come from the client; undefined once whole. */
  private body: Framing | undefined;
  /** The answer's head went out; before that, its bytes gather here. */
  private headSent = false;
  private pending: Buffer | undefined;

  /** `head`: the rewritten head, CRLFCRLF included; `body`: its framing (chunked, or a length). */
  constructor(
    private readonly client: TunnelClient,
    backend: string,
    head: Uint8Array,
    body: { chunked: boolean; length: number },
  ) {
    this.out.write(head);
    const framing = new Framing();
    if (body.chunked) framing.chunked();
    else framing.byLength(Math.max(0, body.length));
    if (!framing.done) this.body = framing;
    Bun.connect<AppTunnel>({ unix: backend, socket: TUNNEL_HANDLERS, data: this }).then(
      (socket) => {
        if (this.closed) return socket.end();
        this.socket = socket;
        if (this.out.attach(socket)) this.client.tunnelDrained();
      },
      (err: unknown) => {
        if (this.closed) return;
        this.closed = true;
        this.client.tunnelFailed(err);
      },
    );
  }

  /** Body bytes are still owed by the client. */
  get wantsBody(): boolean {
    return this.body !== undefined;
  }

  /** Bytes of the app's answer went to the client. */
  get answering(): boolean {
    return this.headSent || this.pending !== undefined;
  }

  /**
   * Takes bytes from the client: the body's are passed on, what follows the body is dropped
   * (the connection closes after this request). False when the client should pause: the app
   * is not keeping up, or the body is whole. Throws MalformedResponse on broken chunk framing
   * (nothing past it is passed on).
   */
  fromClient(chunk: Buffer): boolean {
    const body = this.body;
    if (!body || this.closed) return false;
    const end = body.feed(chunk, 0);
    const flowing = end > 0 ? this.out.write(end === chunk.length ? chunk : chunk.subarray(0, end)) : true;
    if (body.done) this.body = undefined;
    return flowing && this.body !== undefined;
  }

  /** The client read what was written: the answer may flow again. */
  resume(): void {
    this.socket?.resume();
  }

  /** Ends the tunnel from the client's side (the client is not told: it knows). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.end();
  }

  /** @internal Bytes of the app's answer. */
  onData(chunk: Buffer): void {
    let data = chunk;
    if (!this.headSent) {
      data = this.pending ? concat(this.pending, chunk) : chunk;
      this.pending = undefined;
      let parsed;
      try {
        parsed = parseResponseHead(data);
      } catch {
        parsed = undefined; // not for the gateway to judge: passed on as it is
      }
      if (parsed && !parsed.complete) {
        // Interim answers (100 Continue) go out now: a client waits for them to send its body.
        if (parsed.from > 0) this.client.toClient(data.subarray(0, parsed.from));
        this.pending = parsed.from > 0 ? data.subarray(parsed.from) : data;
        return;
      }
      this.headSent = true;
      const head = parsed ? data.toString("latin1", parsed.interimEnd, parsed.bodyStart - 4) : "";
      if (parsed && !/\r\nconnection:/i.test(head)) {
        if (parsed.interimEnd > 0) this.client.toClient(data.subarray(0, parsed.interimEnd));
        this.client.toClient(Buffer.from(head + "\r\nconnection: close\r\n\r\n", "latin1"));
        data = data.subarray(parsed.bodyStart);
      }
    }
    if (!this.client.toClient(data)) this.socket?.pause();
  }

  /** @internal */
  onDrain(): void {
    if (this.out.pending && this.out.flush()) this.client.tunnelDrained();
  }

  /** @internal */
  onClose(): void {
    if (this.closed) return; // closed by the client
    this.closed = true;
    this.client.tunnelClosed();
  }
}

const TUNNEL_HANDLERS = {
  data(socket: Socket<AppTunnel>, chunk: Buffer) {
    socket.data.onData(chunk);
  },
  drain(socket: Socket<AppTunnel>) {
    socket.data.onDrain();
  },
  close(socket: Socket<AppTunnel>) {
    socket.data.onClose();
  },
  error(socket: Socket<AppTunnel>) {
    socket.data.onClose();
  },
  connectError() {
    // Bun.connect rejects as well; the constructor handles that.
  },
};
