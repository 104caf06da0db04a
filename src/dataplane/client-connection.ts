/**
 * A client connection on the public port: its requests one at a time, each either on the
 * fast path (straight to an instance over a kept-alive connection), or through a one-request
 * tunnel to forge's Hono app, or upgraded to a WebSocket spliced to its instance.
 *
 * Flow control, in short: a request starts only when none is in flight and everything
 * written before has left (so a client that pipelines without reading buffers at most one
 * response); input past MAX_BUFFERED pauses the socket; once a close is decided, nothing
 * more is read and the socket ends when its output is out.
 *
 * Time limits (checked by the gateway's sweep, every 50 ms): a head must arrive whole within
 * headTimeoutMs (408), body bytes may pause at most bodyTimeoutMs (408), output the client
 * does not take for sendTimeoutMs cuts it, a connection with nothing in flight closes after
 * idleTimeoutMs.
 */
import type { Socket } from "bun";
import { ErrorCode, ForgeError, isForgeError, toForgeError } from "../errors.ts";
import type { ConsolaInstance } from "consola";
import type { InvocationRecorder } from "../functions/index.ts";
import type { FunctionPool, Lease, PoolManager } from "../pool/index.ts";
import { isIdempotent } from "../pool/index.ts";
import { tooLarge } from "../router/_body.ts";
import { AppTunnel, type TunnelClient } from "./app-tunnel.ts";
import { badResponse, functionNotFound, functionTimedOut, instanceFailed, newRequestId, recordLeased, recordUnleased } from "./data-plane.ts";
import { clientOf, type TrustedProxies } from "./forwarded.ts";
import { functionOf, isValidHost } from "./hosts.ts";
import { Accumulator } from "./http1/accumulator.ts";
import { errorBytes } from "./http1/error-response.ts";
import { Framing } from "./http1/framing.ts";
import { concat, CRLFCRLF, MAX_HEAD, NON_ASCII } from "./http1/head.ts";
import { Outbox } from "./http1/outbox.ts";
import { methodNotImplemented, parseRequestHead, SERVED_METHODS, type RequestHead } from "./http1/request-head.ts";
import { MalformedResponse, parseResponseHead } from "./http1/response-head.ts";
import type { InstanceConnection, InstanceConnections, ResponseSink } from "./instance-connections.ts";

/** Responses of known length up to this size are taken whole from the instance, whatever the client's pace. */
const WHOLE_LIMIT = 256 * 1024;
/** A closing connection (FIN sent) closes once the client has sent nothing for this long... */
const LINGER_MS = 5000;
/** ...or this long after the FIN at the most. Either way gracefully: what the kernel still holds for the client is delivered. */
const LINGER_MAX_MS = 30_000;
/** Input buffered before the client is paused: a whole head fits, and one read more. */
const MAX_BUFFERED = MAX_HEAD + 64 * 1024;
/** Request body bytes kept while the request waits for an instance, before the client is paused. */
const MAX_EARLY = 64 * 1024;
/** A WebSocket with no byte either way for this long (or the idle timeout, if longer) is closed. */
const UPGRADED_IDLE_MS = 300_000;

/** What a client connection takes from the gateway that accepted it: settings, shared state, the clock. */
export interface ConnectionHost {
  readonly o: { pool: PoolManager; recorder: InvocationRecorder; logger: ConsolaInstance; maxBodyBytes: number; backend: string };
  /** ".<domain>": functions answer at <name><suffix>. */
  readonly suffix: string;
  /** Host values seen lately and the function each names. */
  readonly hosts: Map<string, string | undefined>;
  readonly trusted: TrustedProxies;
  readonly upstream: InstanceConnections;
  readonly idleTimeoutMs: number;
  readonly headTimeoutMs: number;
  readonly bodyTimeoutMs: number;
  readonly sendTimeoutMs: number;
  /** Answer bytes written for clients and not taken by them yet, in all, and their bound. */
  pendingBytes: number;
  readonly maxPendingBytes: number;
  /** A clock as coarse as the sweep (50 ms). */
  readonly now: number;
  /** The connection closed: it leaves the gateway's count (and its address's, when it was counted). */
  closed(conn: ClientConnection, address: string | undefined): void;
}

export class ClientConnection implements ResponseSink, TunnelClient {
  private buf: Buffer | undefined;
  private closed = false;
  /** A close was decided: input is dropped, the socket ends once `out` is empty. */
  private closing = false;
  /** When the FIN went (epoch ms); 0: not yet. */
  private closingAt = 0;
  /** When the client last sent something after the FIN. */
  private lingerAt = 0;
  /** socket.end() was called: the close is on its way. */
  private ended = false;
  /** The one request this connection handed to the app, once it did. */
  private tunnel: AppTunnel | undefined;
  /** Close once the current response is out. */
  private closeAfter = false;
  /** Output to the client; `out.pending` is what it has not taken yet. */
  private readonly out: Outbox;
  /** When output last made progress (a write taken whole, or a drain). */
  private outAt: number;
  private paused = false;
  /** drive() is on the stack: requests finished synchronously do not recurse into it. */
  private driving = false;
  /** When the head being received was first seen incomplete by the sweep; 0: none pending. */
  private headAt = 0;
  /** The head forwarded lines that are the same for every request of this connection (an untrusted peer). */
  private readonly forwardedFixed: string | undefined;
  /** The last Host an untrusted peer sent, and its forwarded lines (forwardedFixed and x-forwarded-host). */
  private lastHost: string | undefined;
  private lastHostLines = "";

  // The request in flight (one at a time; pipelined ones wait in buf).
  private busy = false;
  private name = "";
  private requestId = "";
  private isHead = false;
  /** Pieces of what the client sends, joined without quadratic copying. */
  private readonly pieces = new Accumulator();
  /** How much of buf was already searched for the end of a head. */
  private scanned = 0;
  private method = "GET";
  private websocket = false;
  /** The connection is a WebSocket now, its bytes spliced to `up`. */
  private upgraded = false;
  private createdAt = 0;
  private started = 0;
  private lease: Lease | undefined;
  /** When the connection opened or last started or ended a request (epoch ms, the gateway's coarse clock). */
  private lastActive: number;
  /** When the request in flight times out (epoch ms); 0: no deadline running. */
  private deadlineAt = 0;
  private timeoutMs = 0;
  private waiting: AbortController | undefined;
  private up: InstanceConnection | undefined;
  /** Body bytes of the request still to come from the client. */
  private bodyLeft = 0;
  /** When the last body byte came. */
  private bodyAt = 0;
  /** Body bytes that came while the request waited for an instance, in the pieces they came in. */
  private early: Buffer[] | undefined;
  private earlyBytes = 0;
  /** Head and body when they went upstream in one piece (safe to send again on a fresh connection). */
  private whole: string | Uint8Array | undefined;
  private retried = false;
  // The response.
  /** A byte of the response arrived. */
  private gotBytes = false;
  /** The head to send the client (latin1 text), once the instance's is in. */
  private respHead: string | undefined;
  private headSent = false;
  /** The response is small and of known length: taken whole even when the client reads slowly, so the slot goes back at once. */
  private respWhole = false;
  private buffered: Buffer | undefined;
  private status = 0;
  private bytesOut = 0;
  private upKeepAlive = true;
  private readonly framing = new Framing();

  constructor(
    private readonly g: ConnectionHost,
    private readonly socket: Socket<ClientConnection>,
    /** The key it was counted under (none: refused, never counted). */
    private readonly address: string | undefined,
    /** The peer's address as functions see it. */
    private readonly peer: string,
  ) {
    this.lastActive = this.outAt = g.now;
    this.out = new Outbox(socket);
    if (!g.trusted.has(peer)) this.forwardedFixed = `\r\nx-forwarded-for: ${peer}\r\nx-forwarded-proto: http\r\nx-forge-client-ip: ${peer}`;
  }

  /** A connection over a limit: answered with `err`, then closed, without reading a request. */
  refuse(err: ForgeError): void {
    this.closing = true;
    this.closed = true;
    this.socket.end(errorBytes(err, newRequestId(), true, false));
  }

  // --- client socket events ---

  onData(chunk: Buffer): void {
    if (this.closed) return;
    if (this.closing) {
      this.lingerAt = this.g.now; // read and dropped: the client is still sending
      return;
    }
    if (this.upgraded) {
      this.lastActive = this.g.now;
      if (this.up && !this.up.write(chunk)) this.pauseSelf();
      return;
    }
    if (this.tunnel) return this.toTunnelBody(chunk);
    if (this.busy && this.bodyLeft > 0) {
      this.bodyAt = this.g.now;
      const take = Math.min(this.bodyLeft, chunk.length);
      this.bodyLeft -= take;
      const part = take === chunk.length ? chunk : chunk.subarray(0, take);
      if (this.up) {
        if (!this.up.write(part)) this.pauseSelf();
      } else {
        // Still waiting for an instance: kept for it (the client paused once enough waits).
        (this.early ??= []).push(part);
        this.earlyBytes += part.length;
        if (this.earlyBytes > MAX_EARLY) this.pauseSelf();
      }
      if (take === chunk.length) return;
      chunk = chunk.subarray(take);
    }
    this.buf = this.pieces.append(this.buf, chunk);
    this.drive();
    if (this.buf && this.buf.length > MAX_BUFFERED) this.pauseSelf();
  }

  onDrain(): void {
    if (!this.out.pending) return;
    this.lastActive = this.outAt = this.g.now; // the client reads: output progress counts as activity
    if (this.flushOut()) this.outputTaken();
  }

  /** Everything written went out: what waited for the client to read goes on. */
  private outputTaken(): void {
    if (this.closing) return this.end();
    this.up?.resume();
    this.tunnel?.resume();
    if (this.upgraded) return this.resumeSelf();
    if (!this.busy) {
      this.resumeSelf();
      this.drive();
    }
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.g.pendingBytes -= this.out.pending?.length ?? 0;
    this.g.closed(this, this.address);
    this.tunnel?.close();
    const up = this.up;
    this.up = undefined;
    up?.destroy();
    if (this.waiting) this.waiting.abort(new ForgeError(ErrorCode.ClientClosed, 499, "the client closed the connection while the request waited"));
    else if (this.busy) this.finish(this.status || 499, this.upgraded);
  }

  destroy(): void {
    this.socket.terminate();
    this.onClose();
  }

  // --- the request loop ---

  /** Starts buffered requests while one can start (a loop: errors answered at once do not recurse). */
  private drive(): void {
    if (this.driving) return;
    this.driving = true;
    try {
      while (this.buf && !this.busy && !this.out.pending && !this.closing && !this.closed && !this.tunnel) {
        if (!this.next(this.buf)) break;
      }
    } finally {
      this.driving = false;
    }
  }

  /** Starts the request at the head of buf; false when its head is not complete yet. */
  private next(buf: Buffer): boolean {
    // Only what came since the last look is searched (and the 3 bytes before it, where the
    // end may straddle two pieces): a head in a thousand pieces is scanned once, not 500 times.
    const end = buf.indexOf(CRLFCRLF, Math.max(0, this.scanned - 3));
    if (end < 0) {
      // A line ending in a bare LF ends no head forge takes: answered now, not at a timeout.
      for (let lf = buf.indexOf(10, this.scanned); lf >= 0; lf = buf.indexOf(10, lf + 1)) {
        if (lf === 0 || buf[lf - 1] !== 13) {
          this.refuseRequest(new ForgeError(ErrorCode.BadRequest, 400, "a line of the request head ends in a bare LF", { hint: "end header lines with CRLF (RFC 9112 §2.2)" }));
          return true;
        }
      }
      this.scanned = buf.length;
      if (buf.length > MAX_HEAD) {
        this.refuseRequest(new ForgeError(ErrorCode.HeadersTooLarge, 431, `the request head is longer than ${MAX_HEAD / 1024} KiB`, { hint: "send fewer or shorter headers (cookies, tokens)" }));
        return true;
      }
      return false;
    }
    this.scanned = 0;
    this.headAt = 0;
    this.pieces.reset();
    const text = buf.toString("latin1", 0, end);
    const rest = end + 4 < buf.length ? buf.subarray(end + 4) : undefined;
    const head = parseRequestHead(text);
    if (head instanceof ForgeError) {
      this.refuseRequest(head, text.startsWith("HEAD "));
      return true;
    }
    let name = head.host !== undefined ? functionOf(head.host, this.g.suffix, this.g.hosts) : undefined;
    let target = head.target;
    let prefix = "";
    if (name === undefined && target.startsWith("/fn/") && head.host !== undefined && isValidHost(head.host)) {
      // /fn/<name>/<path> on any other host: the function's, with the prefix cut (X-Forwarded-Prefix says it).
      const stop = target.slice(4).search(/[/?]/);
      const label = stop < 0 ? target.slice(4) : target.slice(4, 4 + stop);
      if (/^[a-z0-9][a-z0-9-]*$/.test(label)) {
        name = label;
        prefix = "/fn/" + label;
        const after = target.slice(prefix.length);
        target = after.startsWith("/") ? after : "/" + after;
      }
    }
    if (name !== undefined && head.plain) {
      this.start(head, name, target, prefix, rest);
      return true;
    }
    if (name !== undefined && head.expectContinue && head.length > this.g.o.maxBodyBytes) {
      // Bun's server sends "100 Continue" on its own before forge sees the request: a body
      // forge would refuse is refused here, so the client never starts sending it.
      this.refuseRequest(tooLarge("request body", this.g.o.maxBodyBytes));
      return true;
    }
    this.toTunnel(head, prefix, rest);
    return false;
  }

  /** Answers a request forge does not pass on, then closes (what follows it cannot be trusted to be framed right). */
  private refuseRequest(err: ForgeError, isHead = false): void {
    this.busy = true;
    this.requestId = newRequestId();
    this.isHead = isHead;
    this.closeAfter = true;
    this.buf = undefined;
    this.fail(err, undefined);
  }

  /** The forwarded-headers lines of a request (each after a CRLF). */
  private forwarded(head: RequestHead, prefix: string): string {
    let lines = this.forwardedFixed;
    if (lines === undefined) {
      // A trusted proxy: what it says of its client is kept, and its own address added.
      const { client, chain } = clientOf(this.peer, this.g.trusted, head.forwardedFor);
      lines = `\r\nx-forwarded-for: ${chain}\r\nx-forwarded-proto: ${head.forwardedProto ?? "http"}\r\nx-forge-client-ip: ${client}`;
      if (head.forwardedHost !== undefined) lines += `\r\nx-forwarded-host: ${head.forwardedHost}`;
    } else if (head.host !== undefined) {
      // A connection sends the same Host again and again: its lines are built once, not per request.
      if (head.host !== this.lastHost) {
        this.lastHost = head.host;
        this.lastHostLines = `${lines}\r\nx-forwarded-host: ${head.host}`;
      }
      lines = this.lastHostLines;
    }
    if (prefix) lines += `\r\nx-forwarded-prefix: ${prefix}`;
    if (head.clientRequestId) lines += `\r\nx-forge-client-request-id: ${head.clientRequestId}`;
    return lines;
  }

  /** Starts a request on the fast path: an instance of function `name` answers it. */
  private start(head: RequestHead, name: string, target: string, prefix: string, rest: Buffer | undefined): void {
    const pool = this.g.o.pool.pool(name);
    this.busy = true;
    this.name = name;
    this.requestId = newRequestId(); // a client's id is kept apart (x-forge-client-request-id)
    this.method = head.method;
    this.isHead = head.method === "HEAD";
    this.websocket = head.websocket;
    this.createdAt = Date.now();
    this.lastActive = this.bodyAt = this.g.now;
    this.started = performance.now();
    this.closeAfter = head.close;
    this.headSent = false;
    this.gotBytes = false;
    this.status = 0;
    this.bytesOut = 0;
    this.retried = false;
    this.upKeepAlive = true;
    const length = Math.max(0, head.length);
    const inHand = rest ? Math.min(rest.length, length) : 0;
    const body = rest && inHand > 0 ? rest.subarray(0, inHand) : undefined;
    this.buf = rest && inHand < rest.length ? rest.subarray(inHand) : undefined;
    this.bodyLeft = length - inHand;
    if (!pool) return this.fail(functionNotFound(name), undefined);
    if (length > this.g.o.maxBodyBytes) return this.fail(tooLarge("request body", this.g.o.maxBodyBytes), pool);
    // An instance's server drops the connection on a method it does not know: answered here.
    if (!SERVED_METHODS.has(head.method)) return this.fail(methodNotImplemented(head.method), pool);
    let text = prefix ? `${head.method} ${target} HTTP/1.1${lineTail(head.kept)}` : head.kept;
    text += this.forwarded(head, prefix) + "\r\nx-forge-request-id: " + this.requestId;
    if (head.websocket) text += "\r\nconnection: upgrade\r\nupgrade: websocket";
    if (head.length < 0 && (head.method === "POST" || head.method === "PUT" || head.method === "PATCH")) text += "\r\ncontent-length: 0";
    text += "\r\n\r\n";
    let out: string | Uint8Array = text;
    if (NON_ASCII.test(text) || body) {
      const h = Buffer.from(text, "latin1");
      out = body ? concat(h, body) : h;
    }
    this.whole = this.bodyLeft === 0 ? out : undefined;
    let got: Lease | Promise<Lease>;
    try {
      got = pool.tryAcquire() ?? pool.acquire((this.waiting = new AbortController()).signal);
    } catch (err) {
      this.waiting = undefined;
      return this.fail(err, pool);
    }
    if (!(got instanceof Promise)) {
      this.waiting = undefined;
      return this.send(got, pool, out, this.createdAt);
    }
    got.then(
      (lease) => {
        this.waiting = undefined;
        if (this.closed) {
          // Gone just as a slot came: the slot goes back, the request is recorded as abandoned.
          this.busy = false;
          lease.release();
          recordLeased(this.g.o.recorder, this.name, lease, this.requestId, this.createdAt, this.started, 499, 0, "sync");
          return;
        }
        this.send(lease, pool, out, Date.now());
      },
      (err: unknown) => {
        this.waiting = undefined;
        if (this.closed) {
          // Gone while queued: recorded, nothing to answer.
          this.busy = false;
          recordUnleased(this.g.o.recorder, this.name, pool.version, this.requestId, this.createdAt, this.started, err, "sync");
          return;
        }
        this.fail(err, pool);
      },
    );
  }

  /** Sends the request to the leased instance; its timeout runs from `now` (the lease's time). */
  private send(lease: Lease, pool: FunctionPool, out: string | Uint8Array, now: number): void {
    this.lease = lease;
    this.timeoutMs = pool.spec.timeoutMs;
    this.deadlineAt = now + this.timeoutMs;
    const up = this.g.upstream.take(lease.instance.endpoint.socketPath, this);
    this.up = up;
    this.framing.mode = 0;
    this.respHead = undefined;
    this.respWhole = false;
    let flowing = up.write(out);
    const early = this.early;
    this.early = undefined;
    this.earlyBytes = 0;
    for (const part of early ?? []) flowing = up.write(part) && flowing;
    if (!flowing) this.pauseSelf();
    else if (this.bodyLeft > 0) this.resumeSelf();
  }

  // --- the instance's answer ---

  /** A response chunk from the instance. */
  fromUpstream(up: InstanceConnection, chunk: Buffer): void {
    if (up !== this.up) return up.destroy();
    this.gotBytes = true;
    if (this.upgraded) {
      this.lastActive = this.g.now;
      this.bytesOut += chunk.length;
      if (!this.write(chunk)) up.pause();
      return;
    }
    let data = chunk;
    let pos = 0;
    try {
      if (!this.respHead) {
        if (this.buffered) {
          data = concat(this.buffered, chunk);
          this.buffered = undefined;
        }
        pos = this.readHead(data);
        if (pos < 0) return; // head incomplete
        if (this.upgraded) return this.spliced(up, data, pos);
      }
      const end = this.framing.feed(data, pos);
      this.bytesOut += end - pos;
      const head = this.respHead;
      let sent = true;
      if (!this.headSent && head !== undefined) {
        // Head and body in one write: one allocation, one syscall.
        const whole = Buffer.allocUnsafe(head.length + end - pos);
        whole.write(head, 0, "latin1");
        if (end > pos) data.copy(whole, head.length, pos, end);
        this.headSent = true;
        sent = this.write(whole, 0, whole.length);
      } else if (end > pos) sent = this.write(data, pos, end - pos);
      // A slow reader holds its instance slot only for bodies too big to take whole.
      if (!sent && !this.respWhole) up.pause();
      if (this.framing.done) {
        if (end < data.length) this.upKeepAlive = false; // extra bytes: out of step
        this.complete();
      }
    } catch (err) {
      this.upKeepAlive = false;
      this.upstreamFailed(err);
    }
  }

  /** Parses the response head in data (after any interim 1xx heads); returns where the body starts in data, or -1 when the head is incomplete. */
  private readHead(data: Buffer): number {
    const parsed = parseResponseHead(data, this.websocket);
    // Interim answers (103 Early Hints) are the client's too (RFC 9110 §15.2): passed on.
    const interimEnd = parsed.complete ? parsed.interimEnd : parsed.from;
    if (interimEnd > 0) this.write(data, 0, interimEnd);
    if (parsed.complete === false) {
      this.buffered = parsed.from === 0 ? data : data.subarray(parsed.from);
      return -1;
    }
    const { status, length, chunked } = parsed;
    this.status = status;
    this.upKeepAlive = parsed.keepAlive;
    const tail = "\r\nx-forge-request-id: " + this.requestId + "\r\nx-forge-start: " + (this.lease?.start ?? "warm");
    if (status === 101) {
      // The instance took the WebSocket: from here on the connection is its, byte for byte.
      this.upgraded = true;
      this.respHead = parsed.out + "\r\nconnection: upgrade" + tail + "\r\n\r\n";
      return parsed.bodyStart;
    }
    const noBody = this.isHead || status === 204 || status === 304;
    if (noBody) this.framing.byLength(0);
    else if (chunked) this.framing.chunked();
    else if (length >= 0) this.framing.byLength(length);
    else {
      // No framing: the body ends when the instance closes; so must the client's connection.
      this.framing.untilClose();
      this.upKeepAlive = false;
      this.closeAfter = true;
    }
    // Taken whole only while forge's buffers for slow readers stay under their bound.
    this.respWhole = noBody || (!chunked && length >= 0 && length <= WHOLE_LIMIT && this.g.pendingBytes < this.g.maxPendingBytes);
    // The rest of a request body the instance did not wait for cannot be skipped safely; nor can a refused upgrade's.
    if (this.bodyLeft > 0 || this.websocket) this.closeAfter = true;
    this.respHead = parsed.out + tail + (this.closeAfter ? "\r\nconnection: close\r\n\r\n" : "\r\n\r\n");
    return parsed.bodyStart;
  }

  /** The 101 is in: its head goes out, and from here bytes pass both ways as they are. */
  private spliced(up: InstanceConnection, data: Buffer, pos: number): void {
    this.headSent = true;
    this.deadlineAt = 0; // a WebSocket lives past the function's timeout
    this.lease?.upgraded();
    const head = this.respHead ?? "";
    let sent = this.write(Buffer.from(head, "latin1"));
    if (pos < data.length) sent = this.write(data, pos, data.length - pos) && sent;
    this.bytesOut += data.length - pos;
    if (!sent) up.pause();
    // Frames the client sent before the 101 came.
    const early = this.buf;
    this.buf = undefined;
    if (early && !up.write(early)) this.pauseSelf();
    else this.resumeSelf();
  }

  /** The instance closed or broke the connection. */
  upstreamClosed(up: InstanceConnection, err?: Error): void {
    if (up !== this.up) return;
    if (this.upgraded) {
      // The WebSocket is over (a close frame went by, or the instance stopped): so is the connection.
      this.up = undefined;
      this.finish(101, false);
      this.closing = true;
      if (!this.out.pending) this.end();
      return;
    }
    if (this.respHead && this.framing.mode === 3 && !err) {
      // A body framed by the close: complete (the client's connection closes after it).
      this.upKeepAlive = false;
      return this.complete();
    }
    this.upstreamFailed(err ?? new Error("the instance closed the connection before the response was complete"));
  }

  /**
   * The instance connection failed (closed, reset) or answered bytes that are not HTTP
   * (MalformedResponse: a 502 bad_response, and the instance is not suspected of a crash).
   */
  private upstreamFailed(err: unknown): void {
    const up = this.up;
    const lease = this.lease;
    if (!up || !lease) return;
    this.up = undefined;
    up.destroy();
    const malformed = err instanceof MalformedResponse;
    if (!malformed && !this.gotBytes && !this.retried && this.whole !== undefined && up.served > 0 && isIdempotent(this.method) && !this.websocket) {
      // A kept-alive connection the instance had closed: nothing was seen to be acted on; once
      // more on a fresh one, for an idempotent method only (a POST may have run: RFC 9110 §9.2.2).
      this.retried = true;
      const fresh = this.g.upstream.open(lease.instance.endpoint.socketPath);
      fresh.client = this;
      this.up = fresh;
      fresh.write(this.whole);
      return;
    }
    if (!malformed) this.g.upstream.closeAll(up.socketPath);
    if (this.headSent) {
      // The response is half sent: only closing tells the client it is cut short.
      this.finish(this.status, false);
      return this.destroy();
    }
    this.lease = undefined;
    if (malformed) {
      lease.release();
      return this.fail(badResponse(this.name, err), undefined, lease);
    }
    lease.fail();
    this.instanceLost(lease, err);
  }

  /**
   * The request's instance failed it: a 502, once the pool knows whether the instance ended
   * and why (its exit notice may come just after the connection closed; one stopped for its
   * memory is answered so). Meanwhile the request stays in flight with no deadline, holding
   * the lease only so that a close of the client or a body timeout ends it instead.
   */
  private instanceLost(lease: Lease, err: unknown): void {
    this.lease = lease;
    this.deadlineAt = 0;
    void lease.exited().then((exit) => {
      if (this.lease !== lease) return;
      this.lease = undefined;
      this.fail(instanceFailed(this.name, err, exit), undefined, lease);
    });
  }

  upstreamDrained(): void {
    if (!this.closing) this.resumeSelf();
  }

  // --- time limits ---

  /** Called by the gateway's sweep: the request's timeout, the head's, the body's, the client's reading, the idle connection's, the lingering close's. */
  checkDeadline(now: number): void {
    const g = this.g;
    if (this.closingAt) {
      if (!this.ended && (now - this.lingerAt > LINGER_MS || now - this.closingAt > LINGER_MAX_MS)) this.closeGracefully();
      return;
    }
    if (this.out.pending && now - this.outAt > g.sendTimeoutMs / 4) {
      // The kernel signals room again only once a third of its buffer is free: a client that
      // reads slowly but steadily shows its progress here, by taking some bytes now.
      const before = this.out.pending.length;
      if (this.flushOut()) {
        this.outAt = now;
        return this.outputTaken();
      }
      if ((this.out.pending?.length ?? 0) < before) this.outAt = now;
      // Nothing taken for the whole send timeout: the client is gone (or hostile).
      else if (now - this.outAt > g.sendTimeoutMs) return this.destroy();
    }
    const idleFor = now - this.lastActive;
    if (this.closing) {
      if (idleFor > g.idleTimeoutMs) this.destroy();
      return;
    }
    if (this.upgraded) {
      if (idleFor > Math.max(g.idleTimeoutMs, UPGRADED_IDLE_MS)) this.destroy();
      return;
    }
    if (this.tunnel) {
      // Body bytes owed to the app (and not held back by forge) must keep coming.
      if (this.tunnel.wantsBody && !this.paused && now - this.bodyAt > g.bodyTimeoutMs) this.tunnelRefused(requestTimeout("the request body"));
      return;
    }
    if (!this.busy) {
      if (this.buf && !this.out.pending) {
        // A head on its way: it has headTimeoutMs to arrive whole, however it trickles.
        if (this.headAt === 0) this.headAt = now;
        else if (now - this.headAt > g.headTimeoutMs) this.refuseRequest(requestTimeout("the request head"));
        return;
      }
      // Idle keep-alive.
      if (idleFor > g.idleTimeoutMs) this.end();
      return;
    }
    if (this.bodyLeft > 0 && !this.paused && now - this.bodyAt > g.bodyTimeoutMs) return this.bodyTimedOut();
    if (this.deadlineAt === 0 || this.deadlineAt > now) return;
    this.deadlineAt = 0;
    this.timedOut(this.timeoutMs);
  }

  /** The client stopped sending the body it announced: 408, and the instance's half request is cut. */
  private bodyTimedOut(): void {
    const err = requestTimeout("the request body");
    if (this.waiting) return this.waiting.abort(err); // answered by the acquire's rejection
    this.cutShort(err);
  }

  private timedOut(timeoutMs: number): void {
    this.cutShort(functionTimedOut(this.name, timeoutMs));
  }

  /** Ends the request in flight early: its instance connection cut, the slot back, `err` answered (or, once the answer started, a close). */
  private cutShort(err: ForgeError): void {
    const up = this.up;
    this.up = undefined;
    up?.destroy();
    if (this.headSent) {
      this.finish(this.status, false);
      return this.destroy();
    }
    const lease = this.lease;
    this.lease = undefined;
    lease?.release();
    this.fail(err, undefined, lease);
  }

  // --- ends of a request ---

  /** The response is whole: the slot and the connection go back, the next request starts. */
  private complete(): void {
    const up = this.up;
    this.up = undefined;
    if (up) {
      up.served++;
      up.resume();
      if (this.upKeepAlive && this.bodyLeft === 0) this.g.upstream.release(up);
      else up.destroy();
    }
    this.finish(this.status, true);
  }

  /** Ends the request in flight: lease back, record written; then the next one, or the close. */
  private finish(status: number, ok: boolean): void {
    if (!this.busy) return;
    const lease = this.lease;
    this.lease = undefined;
    this.settle();
    if (lease) {
      lease.release();
      recordLeased(this.g.o.recorder, this.name, lease, this.requestId, this.createdAt, this.started, status, this.bytesOut, "sync");
    }
    if (ok) this.afterResponse();
  }

  /** Answers the request in flight with an error (no instance reached, or none answered in time). */
  private fail(err: unknown, pool: FunctionPool | undefined, lease?: Lease): void {
    const e = isForgeError(err) ? err : toForgeError(err, this.g.o.logger);
    const recorder = this.g.o.recorder;
    if (lease) recordLeased(recorder, this.name, lease, this.requestId, this.createdAt, this.started, e.status, 0, "sync");
    else if (pool) recordUnleased(recorder, this.name, pool.version, this.requestId, this.createdAt, this.started, e, "sync");
    if (this.bodyLeft > 0) this.closeAfter = true; // the rest of the body is not read
    this.write(errorBytes(e, this.requestId, this.closeAfter, this.isHead));
    this.settle();
    this.afterResponse();
  }

  /** The request in flight is over: its state goes. */
  private settle(): void {
    this.busy = false;
    this.lastActive = this.g.now;
    this.deadlineAt = 0;
    this.whole = undefined;
    this.early = undefined;
    this.earlyBytes = 0;
    this.respHead = undefined;
    this.buffered = undefined;
  }

  /** After a response: close if it said so, else read on and start the next request. */
  private afterResponse(): void {
    if (this.closed) return;
    if (this.closeAfter) {
      this.closing = true;
      this.buf = undefined;
      if (!this.out.pending) this.end();
      return;
    }
    if (!this.out.pending) {
      this.resumeSelf();
      this.drive();
    }
  }

  // --- the tunnel: one request to the Hono app ---

  /** Hands the request to the app (see AppTunnel); what the client sends after it is not read (RFC 9112 §9.6: a client retries it). */
  private toTunnel(head: RequestHead, prefix: string, rest: Buffer | undefined): void {
    this.buf = undefined;
    this.closeAfter = true;
    this.bodyAt = this.g.now;
    const text = head.kept + this.forwarded(head, prefix) + "\r\nconnection: close\r\n\r\n";
    const tunnel = new AppTunnel(this, this.g.o.backend, Buffer.from(text, "latin1"), head);
    this.tunnel = tunnel;
    if (rest) this.toTunnelBody(rest);
    else if (!tunnel.wantsBody) this.pauseSelf();
  }

  /** Body bytes of the tunnelled request. */
  private toTunnelBody(chunk: Buffer): void {
    const tunnel = this.tunnel;
    if (!tunnel) return;
    this.bodyAt = this.g.now;
    try {
      if (!tunnel.fromClient(chunk)) this.pauseSelf();
    } catch {
      this.tunnelRefused(new ForgeError(ErrorCode.BadRequest, 400, "the request's chunked body is malformed", { hint: "end chunk size lines and chunk data with CRLF; sizes are at most 15 hex digits" }));
    }
  }

  /** The tunnelled request fails before the app answered: the tunnel goes, the client gets `err`, then the close. */
  private tunnelRefused(err: ForgeError): void {
    const tunnel = this.tunnel;
    this.tunnel = undefined;
    tunnel?.close();
    if (tunnel?.answering) return this.destroy(); // half an answer out: only a close says it is cut
    this.write(errorBytes(err, newRequestId(), true, false));
    this.closing = true;
    if (!this.out.pending) this.end();
  }

  toClient(data: Uint8Array): boolean {
    this.lastActive = this.g.now;
    return this.write(data);
  }

  tunnelDrained(): void {
    if (this.tunnel?.wantsBody) this.resumeSelf();
  }

  tunnelClosed(): void {
    this.closing = true;
    if (!this.out.pending) this.end();
  }

  tunnelFailed(err: unknown): void {
    this.g.o.logger.error("the gateway could not reach the API server:", err);
    this.tunnelRefused(
      new ForgeError(ErrorCode.ServiceUnavailable, 503, "forge's API server did not answer", {
        hint: "the server log says why; restarting forge recreates its socket (<data dir>/api.sock)",
      }),
    );
  }

  // --- writing and flow control ---

  /** Writes data (or `length` bytes of it from `offset`); false when some of it waits for drain. */
  private write(data: Uint8Array, offset = 0, length = data.byteLength - offset): boolean {
    if (this.closed) return false;
    const before = this.out.pending?.length ?? 0;
    const all = this.out.write(data, offset, length);
    if (all) this.outAt = this.g.now;
    else this.g.pendingBytes += (this.out.pending?.length ?? 0) - before;
    return all;
  }

  private flushOut(): boolean {
    const before = this.out.pending?.length ?? 0;
    const all = this.out.flush();
    this.g.pendingBytes += (this.out.pending?.length ?? 0) - before;
    return all;
  }

  private pauseSelf(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private resumeSelf(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket.resume();
  }

  /**
   * Closes after the output, lingering: FIN first, then what the client still sends is read
   * and dropped until it closes (or LINGER_MS passes). Closing with unread input would send a
   * RST, and a RST can destroy the answer the client has not read yet.
   */
  private end(): void {
    if (this.closed || this.closingAt) return;
    this.closing = true;
    this.closingAt = this.lingerAt = this.g.now;
    this.socket.shutdown();
    this.resumeSelf();
  }

  /** Closes without a reset: the kernel still delivers what it holds for the client. */
  private closeGracefully(): void {
    if (this.closed || this.ended) return;
    this.ended = true;
    this.socket.end();
  }
}

function requestTimeout(what: string): ForgeError {
  return new ForgeError(ErrorCode.RequestTimeout, 408, `${what} did not arrive in time`, {
    hint: "send the whole request promptly; an operator sets the limits (FORGE_HEAD_TIMEOUT, FORGE_BODY_TIMEOUT)",
  });
}

/** The head's lines after its request line (with their leading CRLF), or "". */
function lineTail(head: string): string {
  const i = head.indexOf("\r\n");
  return i < 0 ? "" : head.slice(i);
}
