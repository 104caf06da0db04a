/**
 * Kept-alive connections to instances' Unix sockets, reused request after request: the
 * gateway's side of the instance link. A connection serves one client request at a time and
 * hands what it reads to that request's ResponseSink.
 */
import type { Socket } from "bun";
import { Outbox } from "./http1/outbox.ts";

/** Who takes what an instance connection reads (a client connection's request in flight). */
export interface ResponseSink {
  fromUpstream(up: InstanceConnection, chunk: Buffer): void;
  upstreamClosed(up: InstanceConnection, err?: Error): void;
  /** Everything written went out: more of the request body may be sent. */
  upstreamDrained(): void;
}

/** Kept-alive connections to instances, per socket path. */
export class InstanceConnections {
  private readonly idle = new Map<string, InstanceConnection[]>();
  private readonly live = new Set<InstanceConnection>();
  private disposed = false;

  /** A connection for `client`, reused when one is idle. */
  take(socketPath: string, client: ResponseSink): InstanceConnection {
    const up = this.idle.get(socketPath)?.pop() ?? this.open(socketPath);
    up.client = client;
    return up;
  }

  open(socketPath: string): InstanceConnection {
    const up = new InstanceConnection(this, socketPath);
    this.live.add(up);
    Bun.connect<InstanceConnection>({ unix: socketPath, socket: UP_HANDLERS, data: up }).then(
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

  /**
   * Opens a connection to `socketPath` ahead of its first request and keeps it idle: a stem
   * cell's, so that the request that specializes it does not also pay for a new connection
   * (a fresh node process takes ~1.3 ms to answer on a new connection, ~0.3 ms on an open one).
   */
  prime(socketPath: string): void {
    if (this.disposed || (this.idle.get(socketPath)?.length ?? 0) > 0) return;
    this.release(this.open(socketPath));
  }

  release(up: InstanceConnection): void {
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

  forget(up: InstanceConnection): void {
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
export class InstanceConnection {
  socket: Socket<InstanceConnection> | undefined;
  client: ResponseSink | undefined;
  closed = false;
  /** Responses completed on it. */
  served = 0;
  private readonly out = new Outbox();
  paused = false;

  constructor(
    readonly pool: InstanceConnections,
    readonly socketPath: string,
  ) {}

  connected(socket: Socket<InstanceConnection>): void {
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
  data(socket: Socket<InstanceConnection>, chunk: Buffer) {
    socket.data.onData(chunk);
  },
  drain(socket: Socket<InstanceConnection>) {
    socket.data.onDrain();
  },
  close(socket: Socket<InstanceConnection>, error?: Error) {
    socket.data.onClose(error);
  },
  error(socket: Socket<InstanceConnection>, error: Error) {
    socket.data.onClose(error);
    socket.terminate();
  },
  connectError() {
    // Bun.connect rejects as well; Upstreams.open handles that.
  },
};

