import { MalformedResponse } from "./response-head.ts";

/** A chunk size line: hex digits (at most 15: below 2^53), then optionally extensions. */
export const CHUNK_SIZE_LINE = /^([0-9a-fA-F]{1,15})(?:[ \t]*;[^\r\n]*)?$/;

/** Where a response body ends, tracked over the raw bytes passed on. */
export class Framing {
  /** 0 done, 1 by length, 2 chunked, 3 until the upstream closes. */
  mode = 0;
  remaining = 0;
  /** Chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailer lines. */
  private step = 0;
  private line = "";

  get done(): boolean {
    return this.mode === 0;
  }

  byLength(n: number): void {
    this.mode = n > 0 ? 1 : 0;
    this.remaining = n;
  }

  chunked(): void {
    this.mode = 2;
    this.step = 0;
    this.line = "";
  }

  untilClose(): void {
    this.mode = 3;
  }

  /** Takes body bytes of buf from pos; returns where the body (or buf) ends. Throws on broken chunk framing. */
  feed(buf: Buffer, pos: number): number {
    const n = buf.length;
    if (this.mode === 1) {
      const take = Math.min(this.remaining, n - pos);
      this.remaining -= take;
      if (this.remaining === 0) this.mode = 0;
      return pos + take;
    }
    if (this.mode === 3) return n;
    while (this.mode === 2 && pos < n) {
      if (this.step === 2) {
        // The CRLF that ends a chunk's data, checked byte by byte (it may straddle reads).
        if (buf[pos] !== (this.remaining === 2 ? 13 : 10)) throw new MalformedResponse("a chunk's data is not followed by CRLF");
        pos++;
        if (--this.remaining === 0) this.step = 0;
        continue;
      }
      if (this.step === 1) {
        const take = Math.min(this.remaining, n - pos);
        pos += take;
        this.remaining -= take;
        if (this.remaining > 0) break;
        this.step = 2;
        this.remaining = 2;
        continue;
      }
      const e = buf.indexOf(10, pos);
      this.line += buf.toString("latin1", pos, e < 0 ? n : e);
      if (this.line.length > 4096) throw new MalformedResponse("a chunk size or trailer line is longer than 4096 bytes");
      if (e < 0) return n;
      pos = e + 1;
      // Lines end in CRLF (RFC 9112 §7.1): a bare LF is how two parsers come to disagree.
      if (!this.line.endsWith("\r")) throw new MalformedResponse("a chunk size or trailer line ends in a bare LF");
      const line = this.line.slice(0, -1);
      this.line = "";
      if (this.step === 3) {
        if (line === "") this.mode = 0;
        continue;
      }
      // The whole size, or none: 17 hex digits must not be read as their first 15.
      const hex = CHUNK_SIZE_LINE.exec(line)?.[1];
      if (hex === undefined) throw new MalformedResponse(`bad chunk size line ${JSON.stringify(line.slice(0, 20))}`);
      const size = Number.parseInt(hex, 16);
      if (size === 0) this.step = 3;
      else {
        this.step = 1;
        this.remaining = size;
      }
    }
    return pos;
  }
}

