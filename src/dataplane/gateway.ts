/**
 * The front door: forge's public port is a raw TCP listener (Bun.listen). It reads every
 * request head itself, strictly (http1/request-head.ts), and:
 * - proxies plain HTTP/1.1 requests for `<name>.<domain>` and `/fn/<name>/...` straight to an
 *   instance's Unix socket over kept-alive connections (the fast path), WebSocket upgrades
 *   included, which are then spliced byte for byte;
 * - hands every other well-formed request (the control API, chunked uploads, Expect, HTTP/1.0)
 *   to the Hono app (Bun.serve on a private Unix socket), one request per tunnel, rewritten
 *   with the forwarded headers and `connection: close`, its body framed by forge;
 * - answers what no proxy may pass on (malformed lines, two Hosts, repeated lengths, both
 *   framings, unknown methods, heads too slow or too long) itself, then closes.
 *
 * Why raw: Bun.serve and a Request/Response pair per proxied call cost ~35 us of CPU a
 * request, twice nginx's proxy (bench: gateway-vs-nginx). Here a warm request is one read,
 * one head rewritten as a string, one write each way: body bytes and the response framing
 * are passed on as they are, only tracked to find the end. Responses carry
 * x-forge-request-id and x-forge-start and are recorded like those of the DataPlane.
 *
 * This file holds the listener, the connection caps and the sweep of time limits; a
 * connection's request loop is ClientConnection.
 */
import type { TCPSocketListener } from "bun";
import type { ConsolaInstance } from "consola";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { InvocationRecorder } from "../functions/index.ts";
import type { PoolManager } from "../pool/index.ts";
import { ClientConnection, type ConnectionHost } from "./client-connection.ts";
import { displayAddress, TrustedProxies } from "./forwarded.ts";
import { clientKey } from "./hosts.ts";
import { InstanceConnections } from "./instance-connections.ts";

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
  /** A request head must arrive whole within this long, ms (408 past it). Default 15 s. */
  headTimeoutMs?: number;
  /** Body bytes may pause at most this long, ms (408 past it). Default 30 s. */
  bodyTimeoutMs?: number;
  /** A client that takes none of its answer for this long is cut, ms. Default 30 s. */
  sendTimeoutMs?: number;
  /** Peers whose X-Forwarded-* headers are believed (FORGE_TRUSTED_PROXIES). Default none. */
  trustedProxies?: TrustedProxies;
  /** Answer bytes held for clients that read slowly, in all: past it, a slow reader holds its instance slot instead. Default 64 MiB. */
  maxPendingBytes?: number;
}

export class Gateway implements ConnectionHost {
  private listener: TCPSocketListener<ClientConnection> | undefined;
  /** Checks the deadlines of requests in flight every 50 ms (a timer per request showed in the profile). */
  private sweeper: ReturnType<typeof setInterval> | undefined;
  /** @internal */ readonly upstream = new InstanceConnections();
  /** @internal */ readonly suffix: string;
  /** @internal */ readonly idleTimeoutMs: number;
  /** @internal Host values seen lately and the function each names (clients send the same few again and again). */
  readonly hosts = new Map<string, string | undefined>();
  /** @internal */ readonly clients = new Set<ClientConnection>();
  /** Open connections per client address. */
  private readonly perAddress = new Map<string, number>();
  private readonly maxConnections: number;
  private readonly maxPerClient: number;
  /** @internal */ readonly headTimeoutMs: number;
  /** @internal */ readonly bodyTimeoutMs: number;
  /** @internal */ readonly sendTimeoutMs: number;
  /** @internal */ readonly trusted: TrustedProxies;
  /** @internal Answer bytes written for clients and not taken by them yet, in all. */
  pendingBytes = 0;
  /** @internal */ readonly maxPendingBytes: number;

  constructor(/** @internal */ readonly o: GatewayOptions) {
    this.suffix = "." + o.domain.toLowerCase();
    this.idleTimeoutMs = o.idleTimeoutMs ?? 75_000;
    this.maxConnections = o.maxConnections ?? 4096;
    this.maxPerClient = o.maxConnectionsPerClient ?? 512;
    this.headTimeoutMs = o.headTimeoutMs ?? 15_000;
    this.bodyTimeoutMs = o.bodyTimeoutMs ?? 30_000;
    this.sendTimeoutMs = o.sendTimeoutMs ?? 30_000;
    this.trusted = o.trustedProxies ?? new TrustedProxies();
    this.maxPendingBytes = o.maxPendingBytes ?? 64 * 1024 * 1024;
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

  /** @internal */
  closed(conn: ClientConnection, address: string | undefined): void {
    this.clients.delete(conn);
    if (address === undefined) return;
    const mine = (this.perAddress.get(address) ?? 1) - 1;
    if (mine > 0) this.perAddress.set(address, mine);
    else this.perAddress.delete(address);
  }

  /** Starts listening; returns the port (the one given, or the one chosen for 0). */
  listen(hostname: string, port: number): number {
    const gateway = this;
    this.listener = Bun.listen<ClientConnection>({
      hostname,
      port,
      socket: {
        open(socket) {
          // As nginx's tcp_nodelay: an answer written while an earlier segment waits for its
          // ACK is not held back by Nagle's algorithm.
          socket.setNoDelay(true);
          // A peer gone before this ran has no address: nothing to count it under.
          const remote = socket.remoteAddress;
          const address = remote ? clientKey(remote) : undefined;
          const refused = address === undefined ? undefined : gateway.admit(address);
          socket.data = new ClientConnection(gateway, socket, refused ? undefined : address, displayAddress(remote ?? ""));
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

  /** Opens a connection to an instance's socket ahead of its first request (a stem cell's: see InstanceConnections.prime). */
  primeInstance(socketPath: string): void {
    this.upstream.prime(socketPath);
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

