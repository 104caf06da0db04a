/**
 * Bytes of a connection that arrive in pieces (a request head sent a byte at a time, a body
 * waiting for its instance). Concatenating every piece onto what came before copies the
 * whole so far each time: n bytes in one-byte pieces cost n²/2 copied bytes, and a client
 * trickling a 60 KB head made the gateway copy ~1.8 GB for it. Here a piece goes into spare
 * room that doubles when it runs out (by 64 KiB at most), so a head of n bytes costs at
 * most ~3n.
 */
export class Accumulator {
  /** The buffer the accumulated bytes live at the start of (only while they are ours). */
  private room: Buffer | undefined;
  /** How many bytes of the room are in use (what the last append returned). */
  private used = 0;
  /** Bytes copied so far (tests count them). */
  copied = 0;

  /** `held` with `chunk` after it; `held` must be what the last call returned (or a buffer of its own). */
  append(held: Buffer | undefined, chunk: Buffer): Buffer {
    if (!held || held.length === 0) return chunk;
    const total = held.length + chunk.length;
    const room = this.room;
    // In place only when `held` is exactly what the last append returned: no other view of
    // the room can lie past its end then.
    if (room && held.buffer === room.buffer && held.byteOffset === room.byteOffset && held.length === this.used && total <= room.length) {
      chunk.copy(room, held.length);
      this.copied += chunk.length;
      this.used = total;
      return room.subarray(0, total);
    }
    // Spare room doubles while small (a head trickling in), and is at most 64 KiB past the
    // bytes held (pipelined requests read in large pieces must not hold twice their size).
    const grown = Buffer.allocUnsafe(Math.max(Math.min(total * 2, total + 64 * 1024), 4096));
    held.copy(grown, 0);
    chunk.copy(grown, held.length);
    this.copied += total;
    this.room = grown;
    this.used = total;
    return grown.subarray(0, total);
  }

  /** Forgets the room (the bytes were taken); the next append starts afresh. */
  reset(): void {
    this.room = undefined;
    this.used = 0;
  }
}
