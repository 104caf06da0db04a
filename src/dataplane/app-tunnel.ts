/**
 * The private connection to forge's Hono app (Bun.serve on a Unix socket) that carries one
 * request the fast path does not take, and its answer back, as bytes.
 */
import type { Socket } from "bun";
import { Outbox } from "./http1/outbox.ts";

/** Who takes the app's answer (a client connection). */
export interface TunnelSink {
  fromTunnel(chunk: Buffer): void;
  tunnelDrained(): void;
  tunnelClosed(): void;
}

/** The tunnel to Bun.serve a connection becomes when the fast path does not take a request. */
export class Tunnel {
  socket: Socket<Tunnel> | undefined;
  private readonly out = new Outbox();
  closed = false;

  constructor(readonly client: TunnelSink) {}

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

export const TUNNEL_HANDLERS = {
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

