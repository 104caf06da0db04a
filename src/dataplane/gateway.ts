/**
 * The front door: forge's public port is a raw TCP listener (Bun.listen) that proxies
 * plain HTTP/1.1 requests for `<name>.<domain>` straight to an instance's Unix socket,
 * and hands every other connection, whole, to the Hono app (Bun.serve on a private Unix
 * socket) through a byte tunnel.
 *
 * Why: Bun.serve and a Request/Response pair per proxied call cost ~35 us of CPU a request,
 * twice nginx's proxy (bench: gateway-vs-nginx). Here a warm request is one read, one head
 * rewritten as a string, one write each way: the bytes of the body and of the response
 * framing (content-length or chunked) are passed on as they are, only tracked to find the end.
 *
 * The fast path takes only what it parses strictly: HTTP/1.1, origin-form target, no
 * Transfer-Encoding, Upgrade or Expect, at most one Content-Length and one Host, no folded
 * or malformed header lines. Anything else, at a request boundary, turns the connection
 * into a tunnel to Bun.serve, whose parser then answers it (so a smuggling attempt meets
 * Bun's parser, never a lenient one). Responses carry x-forge-request-id and x-forge-start
 * and are recorded like those of the Request-based DataPlane.
 */
import type { Socket, TCPSocketListener } from "bun";
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError, isForgeError, toForgeError } from "../errors.ts";
import type { InvocationRecorder } from "../functions/index.ts";
import { isIdempotent, type FunctionPool, type Lease, type PoolManager } from "../pool/index.ts";
import { tooLarge } from "../router/_body.ts";
import { Accumulator } from "./http1/accumulator.ts";
import { errorBytes } from "./http1/error-response.ts";
import { Framing } from "./http1/framing.ts";
import { concat, CRLFCRLF, MAX_HEAD, NON_ASCII } from "./http1/head.ts";
import { Outbox } from "./http1/outbox.ts";
import { expectsTooMuch, hostDisagrees, methodNotImplemented, parseRequest, SERVED_METHODS } from "./http1/request-head.ts";
import { MalformedResponse, parseResponseHead } from "./http1/response-head.ts";
import { clientKey, functionOf, functionOfHost } from "./hosts.ts";
import { functionNotFound, functionTimedOut, instanceFailed, recordLeased, recordUnleased, newRequestId } from "./data-plane.ts";

export interface GatewayOptions {
  pool: PoolManager;
  recorder: InvocationRecorder;
  logger: ConsolaInstance;
  /** Functions answer at <name>.<domain>. */
  domain: string;
  /** Request body limit, bytes (413 past it). */
  maxBodyBytes: number;
  /** Unix socket of the Bun.serve that answers everything the fast path does not take. */
  backend: string;
  /** Closes a connection with no request in flight after this long, ms (idle keep-alive, slow heads). Default 75 s. */
  idleTimeoutMs?: number;
  /**
   * Client connections open at once (a tunnelled one holds 3 descriptors: keep 3x this under
   * the descriptor limit). Past it a new connection gets a 503 and is closed. Default 4096.
   */
  maxConnections?: number;
  /** The same per client address, so that one client cannot take them all. Default 512. */
  maxConnectionsPerClient?: number;
}

/** Responses of known length up to this size are taken whole from the instance, whatever the client's pace. */
const WHOLE_LIMIT = 256 * 1024;
/** A closing connection (FIN sent) closes once the client has sent nothing for this long... */
const LINGER_MS = 5000;
/** ...or this long after the FIN at the most. Either way gracefully: what the kernel still holds for the client is delivered. */
const LINGER_MAX_MS = 30_000;
/** Bytes of pipelined requests buffered before the client is paused. */
const MAX_BUFFERED = 1024 * 1024;

export class Gateway {
  private listener: TCPSocketListener<Client> | undefined;
  /** Checks the deadlines of requests in flight every 50 ms (a timer per request showed in the profile). */
  private sweeper: ReturnType<typeof setInterval> | undefined;
  /** @internal */ readonly upstream = new Upstreams();
  /** @internal */ readonly suffix: string;
  /** @internal */ readonly idleTimeoutMs: number;
  /** @internal Host values seen lately and the function each names (clients send the same few again and again). */
  readonly hosts = new Map<string, string | undefined>();
  /** @internal */ readonly clients = new Set<Client>();
  /** Open connections per client address. */
  private readonly perAddress = new Map<string, number>();
  private readonly maxConnections: number;
  private readonly maxPerClient: number;

  constructor(/** @internal */ readonly o: GatewayOptions) {
    this.suffix = "." + o.domain.toLowerCase();
    this.idleTimeoutMs = o.idleTimeoutMs ?? 75_000;
    this.maxConnections = o.maxConnections ?? 4096;
    this.maxPerClient = o.maxConnectionsPerClient ?? 512;
  }

  /** Counts a new connection in; a ForgeError when it is one too many (it is then answered 503 and closed). */
  private admit(address: string): ForgeError | undefined {
    const mine = this.perAddress.get(address) ?? 0;
    if (this.clients.size >= this.maxConnections) {
      return new ForgeError(ErrorCode.ServiceUnavailable, 503, `forge has ${this.clients.size} connections open, its limit`, {
        hint: "retry shortly; an operator can raise FORGE_MAX_CONNECTIONS (and the descriptor limit)",
      });
    }
    if (mine >= this.maxPerClient) {
      return new ForgeError(ErrorCode.ServiceUnavailable, 503, `this client address has ${mine} connections open, the limit per client`, {
        hint: "reuse connections (keep-alive) rather than opening more; an operator can raise FORGE_MAX_CONNECTIONS_PER_CLIENT",
      });
    }
    this.perAddress.set(address, mine + 1);
    return undefined;
  }

  /** @internal A connection counted in by admit() closed. */
  release(address: string): void {
    const mine = (this.perAddress.get(address) ?? 1) - 1;
    if (mine > 0) this.perAddress.set(address, mine);
    else this.perAddress.delete(address);
  }

  /** Starts listening; returns the port (the one given, or the one chosen for 0). */
  listen(hostname: string, port: number): number {
    const gateway = this;
    this.listener = Bun.listen<Client>({
      hostname,
      port,
      socket: {
        open(socket) {
          // As nginx's tcp_nodelay: an answer written while an earlier segment waits for its
          // ACK is not held back by Nagle's algorithm.
          socket.setNoDelay(true);
          // A peer gone before this ran has no address: nothing to count it under.
          const address = socket.remoteAddress ? clientKey(socket.remoteAddress) : undefined;
          const refused = address === undefined ? undefined : gateway.admit(address);
          socket.data = new Client(gateway, socket, refused ? undefined : address);
          if (refused) return socket.data.refuse(refused);
          gateway.clients.add(socket.data);
          if (!gateway.sweeper) gateway.now = Date.now();
          gateway.sweeper ??= setInterval(() => gateway.sweep(), 50);
          gateway.sweeper.unref?.();
        },
        data(socket, chunk) {
          socket.data.onData(chunk);
        },
        drain(socket) {
          socket.data.onDrain();
        },
        close(socket) {
          socket.data.onClose();
        },
        error(socket, error) {
          // Also what Bun calls when a handler above throws: the socket must not stay open, unwatched.
          gateway.o.logger.debug?.("gateway connection error:", error);
          socket.data.destroy();
        },
      },
    });
    return this.listener.port;
  }

  /** Stops accepting and closes every connection (requests in flight were drained by the pool before). */
  stop(): void {
    clearInterval(this.sweeper);
    this.listener?.stop(true);
    this.listener = undefined;
    for (const c of [...this.clients]) c.destroy();
    this.upstream.dispose();
  }

  private sweep(): void {
    if (this.clients.size === 0) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
      return;
    }
    const now = (this.now = Date.now());
    for (const c of this.clients) c.checkDeadline(now);
  }

  /** @internal A clock as coarse as the sweep (50 ms), for idle times: no clock read per request. */
  now = Date.now();
}

// --- internal ---

/** Kept-alive connections to instances, per socket path. */
class Upstreams {
  private readonly idle = new Map<string, Up[]>();
  private readonly live = new Set<Up>();
  private disposed = false;

  /** A connection for `client`, reused when one is idle. */
  take(socketPath: string, client: Client): Up {
    const up = this.idle.get(socketPath)?.pop() ?? this.open(socketPath);
    up.client = client;
    return up;
  }

  open(socketPath: string): Up {
    const up = new Up(this, socketPath);
    this.live.add(up);
    Bun.connect<Up>({ unix: socketPath, socket: UP_HANDLERS, data: up }).then(
      (socket) => {
        if (up.closed || this.disposed) {
          socket.terminate();
          return;
        }
        up.connected(socket);
      },
      (err: unknown) => up.onClose(err instanceof Error ? err : new Error(String(err))),
    );
    return up;
  }

  release(up: Up): void {
    up.client = undefined;
    if (this.disposed || up.closed) return up.destroy();
    let list = this.idle.get(up.socketPath);
    if (!list) this.idle.set(up.socketPath, (list = []));
    if (list.length >= 1024) return up.destroy();
    list.push(up);
  }

  /** Closes the idle connections to a socket path (its instance failed). */
  closeAll(socketPath: string): void {
    const list = this.idle.get(socketPath);
    this.idle.delete(socketPath);
    for (const up of list ?? []) up.destroy();
  }

  forget(up: Up): void {
    this.live.delete(up);
    const list = this.idle.get(up.socketPath);
    if (!list) return;
    const i = list.indexOf(up);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.idle.delete(up.socketPath);
  }

  dispose(): void {
    this.disposed = true;
    for (const up of [...this.live]) up.destroy();
    this.idle.clear();
  }
}

/** One connection to an instance; serves one client request at a time. */
class Up {
  socket: Socket<Up> | undefined;
  client: Client | undefined;
  closed = false;
  /** Responses completed on it. */
  served = 0;
  private readonly out = new Outbox();
  paused = false;

  constructor(
    readonly pool: Upstreams,
    readonly socketPath: string,
  ) {}

  connected(socket: Socket<Up>): void {
    this.socket = socket;
    const all = this.out.attach(socket);
    if (this.paused) socket.pause();
    // The client stopped reading while the connection opened: more of its body may come now.
    if (all) this.client?.upstreamDrained();
  }

  /** Writes data (ASCII when a string), in order; false when some of it waits for the socket. */
  write(data: string | Uint8Array): boolean {
    return !this.closed && this.out.write(data);
  }

  onDrain(): void {
    if (this.out.pending && this.out.flush()) this.client?.upstreamDrained();
  }

  pause(): void {
    this.paused = true;
    this.socket?.pause();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.socket?.resume();
  }

  onData(chunk: Buffer): void {
    const client = this.client;
    if (!client) return this.destroy(); // bytes nobody asked for: out of step
    client.fromUpstream(this, chunk);
  }

  onClose(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.pool.forget(this);
    const client = this.client;
    this.client = undefined;
    client?.upstreamClosed(this, err);
  }

  destroy(): void {
    if (this.closed) return;
    this.closed = true;
    this.client = undefined;
    this.pool.forget(this);
    this.socket?.terminate();
  }
}

const UP_HANDLERS = {
  data(socket: Socket<Up>, chunk: Buffer) {
    socket.data.onData(chunk);
  },
  drain(socket: Socket<Up>) {
    socket.data.onDrain();
  },
  close(socket: Socket<Up>, error?: Error) {
    socket.data.onClose(error);
  },
  error(socket: Socket<Up>, error: Error) {
    socket.data.onClose(error);
    socket.terminate();
  },
  connectError() {
    // Bun.connect rejects as well; Upstreams.open handles that.
  },
};

/** The tunnel to Bun.serve a connection becomes when the fast path does not take a request. */
class Tunnel {
  socket: Socket<Tunnel> | undefined;
  private readonly out = new Outbox();
  closed = false;

  constructor(readonly client: Client) {}

  write(data: Uint8Array): boolean {
    return !this.closed && this.out.write(data);
  }

  connected(socket: Socket<Tunnel>): void {
    this.socket = socket;
    if (this.out.attach(socket)) this.client.tunnelDrained();
  }

  onDrain(): void {
    if (this.out.pending && this.out.flush()) this.client.tunnelDrained();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket?.end();
  }
}

const TUNNEL_HANDLERS = {
  data(socket: Socket<Tunnel>, chunk: Buffer) {
    socket.data.client.fromTunnel(chunk);
  },
  drain(socket: Socket<Tunnel>) {
    socket.data.onDrain();
  },
  close(socket: Socket<Tunnel>) {
    socket.data.closed = true;
    socket.data.client.tunnelClosed();
  },
  error(socket: Socket<Tunnel>) {
    socket.data.closed = true;
    socket.data.client.tunnelClosed();
  },
  connectError() {
    // Bun.connect rejects as well; Client.toTunnel handles that.
  },
};

/**
 * A client connection: HTTP requests one at a time on the fast path, or a tunnel.
 *
 * Flow control, in short: a request starts only when none is in flight and everything
 * written before has left (so a client that pipelines without reading buffers at most one
 * response); bytes past MAX_BUFFERED pause the socket; once a close is decided, nothing more
 * is read and the socket ends when its output is out.
 */
class Client {
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
  private tunnel: Tunnel | undefined;
  /** Close once the current response is out. */
  private closeAfter = false;
  /** Output to the client; `out.pending` is what it has not taken yet. */
  private readonly out: Outbox;
  private paused = false;
  /** drive() is on the stack: requests finished synchronously do not recurse into it. */
  private driving = false;

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
  private createdAt = 0;
  private started = 0;
  private lease: Lease | undefined;
  /** When the connection opened or last started or ended a request (epoch ms, the gateway's coarse clock). */
  private lastActive: number;
  /** When the request in flight times out (epoch ms); 0: no deadline running. */
  private deadlineAt = 0;
  private timeoutMs = 0;
  private waiting: AbortController | undefined;
  private up: Up | undefined;
  /** Body bytes of the request still to come from the client. */
  private bodyLeft = 0;
  /** Body bytes that came while the request waited for an instance. */
  private early: Buffer | undefined;
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
    private readonly g: Gateway,
    private readonly socket: Socket<Client>,
    /** The client address it was counted under (none: refused, never counted). */
    private readonly address: string | undefined,
  ) {
    this.lastActive = g.now;
    this.out = new Outbox(socket);
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
    if (this.tunnel) {
      this.lastActive = this.g.now;
      if (!this.tunnel.write(chunk)) this.pauseSelf();
      return;
    }
    if (this.busy && this.bodyLeft > 0) {
      const take = Math.min(this.bodyLeft, chunk.length);
      this.bodyLeft -= take;
      const part = take === chunk.length ? chunk : chunk.subarray(0, take);
      if (this.up) {
        if (!this.up.write(part)) this.pauseSelf();
      } else {
        // Still waiting for an instance: kept for it.
        this.early = this.early ? concat(this.early, part) : part;
        if (this.early.length > MAX_BUFFERED) this.pauseSelf();
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
    this.lastActive = this.g.now; // the client reads: output progress counts as activity
    if (!this.out.flush()) return;
    if (this.closing) return this.end();
    this.up?.resume();
    this.tunnel?.socket?.resume();
    if (!this.busy) {
      this.resumeSelf();
      this.drive();
    }
  }

  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.g.clients.delete(this);
    if (this.address !== undefined) this.g.release(this.address);
    this.tunnel?.close();
    const up = this.up;
    this.up = undefined;
    up?.destroy();
    if (this.waiting) this.waiting.abort(new ForgeError(ErrorCode.ClientClosed, 499, "the client closed the connection while the request waited"));
    else if (this.busy) this.finish(this.status || 499, false);
  }

  destroy(): void {
    this.socket.terminate();
    this.onClose();
  }

  // --- the fast path ---

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
      // A bare LF ends no head the fast path takes; Bun's parser answers it (400) at once,
      // where waiting for a CRLFCRLF would hold the connection until the idle timeout.
      for (let lf = buf.indexOf(10, this.scanned); lf >= 0; lf = buf.indexOf(10, lf + 1)) {
        if (lf === 0 || buf[lf - 1] !== 13) {
          this.toTunnel();
          return false;
        }
      }
      this.scanned = buf.length;
      if (buf.length > MAX_HEAD) this.toTunnel();
      return false;
    }
    this.scanned = 0;
    this.pieces.reset();
    const text = buf.toString("latin1", 0, end);
    const head = parseRequest(text, (host) => functionOf(host, this.g.suffix, this.g.hosts));
    if (!head) {
      // Bun's server routes an absolute-form target by Host, where the target's authority
      // wins (RFC 9112 §3.2.2): two names for one request are refused rather than guessed.
      // Bun's server sends "100 Continue" on its own before forge sees the request: a body
      // forge would refuse is refused here, so the client never starts sending it.
      if (expectsTooMuch(text, this.g.o.maxBodyBytes, (host) => functionOfHost(host, this.g.suffix) !== undefined)) {
        this.busy = true;
        this.requestId = newRequestId();
        this.isHead = false;
        this.closeAfter = true;
        this.fail(tooLarge("request body", this.g.o.maxBodyBytes), undefined);
        return true;
      }
      if (hostDisagrees(text)) {
        this.busy = true;
        this.requestId = newRequestId();
        this.isHead = text.startsWith("HEAD ");
        this.closeAfter = true;
        this.fail(new ForgeError(ErrorCode.BadRequest, 400, "the request's target names another host than its Host header", { hint: "send the same authority in both, or an origin-form target (GET /path)" }), undefined);
        return true;
      }
      this.toTunnel();
      return false;
    }
    const pool = this.g.o.pool.pool(head.name);
    this.busy = true;
    this.name = head.name;
    this.requestId = newRequestId(); // a client's id was cut from the head, never used (see newRequestId)
    this.isHead = head.method === "HEAD";
    this.method = head.method;
    this.createdAt = Date.now();
    this.lastActive = this.g.now;
    this.started = performance.now();
    this.closeAfter = head.close;
    this.headSent = false;
    this.gotBytes = false;
    this.status = 0;
    this.bytesOut = 0;
    this.retried = false;
    this.upKeepAlive = true;
    const rest = end + 4 < buf.length ? buf.subarray(end + 4) : undefined;
    const inHand = rest ? Math.min(rest.length, head.length) : 0;
    const body = rest && inHand > 0 ? rest.subarray(0, inHand) : undefined;
    this.buf = rest && inHand < rest.length ? rest.subarray(inHand) : undefined;
    this.bodyLeft = head.length - inHand;
    if (!pool) {
      this.fail(functionNotFound(head.name), undefined);
      return true;
    }
    if (head.length > this.g.o.maxBodyBytes) {
      this.fail(tooLarge("request body", this.g.o.maxBodyBytes), pool);
      return true;
    }
    if (!SERVED_METHODS.has(head.method)) {
      // An instance's server drops the connection on a method it does not know: answered here.
      this.fail(methodNotImplemented(head.method), pool);
      return true;
    }
    let out: string | Uint8Array = head.out + "\r\nx-forge-request-id: " + this.requestId + "\r\n\r\n";
    if (NON_ASCII.test(out) || body) {
      const h = Buffer.from(out, "latin1");
      out = body ? concat(h, body) : h;
    }
    this.whole = this.bodyLeft === 0 ? out : undefined;
    let got: Lease | Promise<Lease>;
    try {
      got = pool.tryAcquire() ?? pool.acquire((this.waiting = new AbortController()).signal);
    } catch (err) {
      this.waiting = undefined;
      this.fail(err, pool);
      return true;
    }
    if (!(got instanceof Promise)) {
      this.waiting = undefined;
      this.send(got, pool, out, this.createdAt);
      return true;
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
    return true;
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
    if (early) flowing = up.write(early) && flowing;
    if (!flowing) this.pauseSelf();
    else if (this.bodyLeft > 0) this.resumeSelf();
  }

  /** A response chunk from the instance. */
  fromUpstream(up: Up, chunk: Buffer): void {
    if (up !== this.up) return up.destroy();
    this.gotBytes = true;
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
    const parsed = parseResponseHead(data);
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
    this.respWhole = noBody || (!chunked && length >= 0 && length <= WHOLE_LIMIT);
    // The rest of a request body the instance did not wait for cannot be skipped safely.
    if (this.bodyLeft > 0) this.closeAfter = true;
    this.respHead = parsed.out + "\r\nx-forge-request-id: " + this.requestId + "\r\nx-forge-start: " + (this.lease?.start ?? "warm") + (this.closeAfter ? "\r\nconnection: close\r\n\r\n" : "\r\n\r\n");
    return parsed.bodyStart;
  }

  /** The instance closed or broke the connection. */
  upstreamClosed(up: Up, err?: Error): void {
    if (up !== this.up) return;
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
    if (!(err instanceof MalformedResponse) && !this.gotBytes && !this.retried && this.whole !== undefined && up.served > 0 && isIdempotent(this.method)) {
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
      this.fail(
        new ForgeError(ErrorCode.BadResponse, 502, `the function's answer is not valid HTTP: ${err.message}`, {
          hint: `see \`forge logs ${this.name}\`; a runtime "docker" function's server must answer well-formed HTTP/1.1`,
        }),
        undefined,
        lease,
      );
      return;
    }
    lease.fail();
    this.fail(instanceFailed(this.name, err), undefined, lease);
  }


  /** Called by the gateway's sweep: the request's timeout, the idle connection's, the lingering close's. */
  checkDeadline(now: number): void {
    if (this.closingAt) {
      if (!this.ended && (now - this.lingerAt > LINGER_MS || now - this.closingAt > LINGER_MAX_MS)) this.closeGracefully();
      return;
    }
    const idle = now - this.lastActive > this.g.idleTimeoutMs;
    if (this.closing) {
      // The FIN waits behind output the client has not read for the whole idle timeout: it is gone.
      if (idle) this.destroy();
      return;
    }
    if (!this.busy && idle) {
      // Output the client has not read for the whole idle timeout: it is gone.
      if (this.out.pending) return this.destroy();
      // Idle keep-alive, a head that never completes, or a tunnel silent both ways.
      this.tunnel?.close();
      return this.end();
    }
    if (this.deadlineAt === 0 || this.deadlineAt > now) return;
    this.deadlineAt = 0;
    this.timedOut(this.timeoutMs);
  }

  private timedOut(timeoutMs: number): void {
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
    this.fail(functionTimedOut(this.name, timeoutMs), undefined, lease);
  }

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

  // --- the tunnel ---

  /** From here on, the connection's bytes go to Bun.serve and back, as they are. */
  private toTunnel(): void {
    const tunnel = new Tunnel(this);
    this.tunnel = tunnel;
    const pending = this.buf;
    this.buf = undefined;
    if (pending) tunnel.write(pending);
    this.pauseSelf();
    Bun.connect<Tunnel>({ unix: this.g.o.backend, socket: TUNNEL_HANDLERS, data: tunnel }).then(
      (socket) => {
        if (this.closed) return socket.end();
        tunnel.connected(socket);
      },
      (err: unknown) => {
        this.g.o.logger.error("the gateway could not reach the API server:", err);
        const e = new ForgeError(ErrorCode.ServiceUnavailable, 503, "forge's API server did not answer", {
          hint: "the server log says why; restarting forge recreates its socket (<data dir>/api.sock)",
        });
        this.tunnel = undefined;
        this.write(errorBytes(e, newRequestId(), true, false));
        this.closing = true;
        if (!this.out.pending) this.end();
      },
    );
  }

  fromTunnel(chunk: Buffer): void {
    this.lastActive = this.g.now;
    if (!this.write(chunk)) this.tunnel?.socket?.pause();
  }

  tunnelDrained(): void {
    this.resumeSelf();
  }

  tunnelClosed(): void {
    this.closing = true;
    if (!this.out.pending) this.end();
  }

  upstreamDrained(): void {
    if (!this.closing) this.resumeSelf();
  }

  // --- writing and flow control ---

  /** Writes data (or `length` bytes of it from `offset`); false when some of it waits for drain. */
  private write(data: Uint8Array, offset = 0, length = data.byteLength - offset): boolean {
    return !this.closed && this.out.write(data, offset, length);
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
