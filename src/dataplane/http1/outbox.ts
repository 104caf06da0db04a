import { concat } from "./head.ts";

/** What can be written to: a Bun socket. */
export interface Writable {
  write(data: string | Uint8Array, byteOffset?: number, byteLength?: number): number;
}

/**
 * Writes to one socket, which may still be connecting: what it does not take yet (writes
 * before it connected, the rest of a partial write) waits here, in order, for `flush()`.
 * Strings written are ASCII (one byte a character).
 */
export class Outbox {
  /** Bytes the socket has not taken yet; undefined when everything went out. */
  pending: Uint8Array | undefined;
  private socket: Writable | undefined;

  constructor(socket?: Writable) {
    this.socket = socket;
  }

  /** The socket is connected: what waited goes out. True when all of it went. */
  attach(socket: Writable): boolean {
    this.socket = socket;
    return this.flush();
  }

  /** Writes data (or `length` bytes of it from `offset`); false when some of it waits. */
  write(data: string | Uint8Array, offset = 0, length = (typeof data === "string" ? data.length : data.byteLength) - offset): boolean {
    const socket = this.socket;
    if (this.pending || !socket) {
      this.pending = this.pending ? concat(this.pending, bytesOf(data, offset, length)) : bytesOf(data, offset, length);
      return false;
    }
    const written = typeof data === "string" ? socket.write(data) : socket.write(data, offset, length);
    if (written >= length) return true;
    this.pending = bytesOf(data, offset, length).subarray(Math.max(0, written));
    return false;
  }

  /** On drain: writes what waits. True when nothing waits any more. */
  flush(): boolean {
    const rest = this.pending;
    if (!rest) return true;
    this.pending = undefined;
    return this.write(rest);
  }
}

function bytesOf(data: string | Uint8Array, offset: number, length: number): Uint8Array {
  return typeof data === "string" ? Buffer.from(data, "latin1") : offset === 0 && length === data.byteLength ? data : data.subarray(offset, offset + length);
}

