import { CHUNK_SIZE_LINE } from "./framing.ts";
import { MalformedResponse } from "./response-head.ts";

/** A trailer line: a field line, as in a response head. */
const TRAILER_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00\r\n]*$/;
/** Longest chunk size or trailer line taken, its CR included. */
const MAX_LINE = 4096;

/** Where in the body the decoder is; in "data-end" (the CRLF after a chunk's data) `remaining` counts its bytes to come. */
type Step = "size" | "data" | "data-end" | "trailer" | "done";

/**
 * Decodes a chunked body (RFC 9112 §7.1) arriving in pieces: hands the data of each chunk to
 * `onData` (views of the buffers fed, not copies) and says where the body ends. Strict, as
 * the response head is: every line ends in CRLF, a chunk's data is followed by exactly CRLF, a
 * size has at most 15 hex digits, a line at most 4096 bytes; trailers are checked and dropped.
 * Anything else throws MalformedResponse.
 */
export class ChunkedDecoder {
  private step: Step = "size";
  private remaining = 0;
  /** A size or trailer line so far (latin1), while it spans buffers. */
  private line = "";

  constructor(private readonly onData: (data: Buffer) => void) {}

  /** The terminating chunk and the trailers are in. */
  get done(): boolean {
    return this.step === "done";
  }

  /** Starts on a new body. */
  reset(): void {
    this.step = "size";
    this.remaining = 0;
    this.line = "";
  }

  /** Takes the body bytes of buf from pos; returns where the body ends, or buf.length when it goes on. */
  feed(buf: Buffer, pos: number): number {
    const n = buf.length;
    while (pos < n && this.step !== "done") {
      if (this.step === "data") {
        const take = Math.min(this.remaining, n - pos);
        this.onData(buf.subarray(pos, pos + take));
        pos += take;
        this.remaining -= take;
        if (this.remaining === 0) {
          this.step = "data-end";
          this.remaining = 2;
        }
      } else if (this.step === "data-end") {
        // Two parsers that skip these two bytes unread can be made to disagree on where a chunk ends.
        if (buf[pos] !== (this.remaining === 2 ? 13 : 10)) throw new MalformedResponse("chunk data not followed by CRLF");
        pos++;
        if (--this.remaining === 0) this.step = "size";
      } else pos = this.takeLine(buf, pos);
    }
    return pos;
  }

  // --- internal ---

  /** Reads (part of) a size or trailer line from pos; returns the position after what it took. */
  private takeLine(buf: Buffer, pos: number): number {
    const lf = buf.indexOf(10, pos);
    const end = lf < 0 ? buf.length : lf;
    if (this.line.length + end - pos > MAX_LINE) throw new MalformedResponse(`a chunk size or trailer line longer than ${MAX_LINE} bytes`);
    this.line += buf.toString("latin1", pos, end);
    if (lf < 0) return end;
    // Lines end in CRLF (RFC 9112 §7.1): a bare LF is how two parsers come to disagree.
    if (this.line.charCodeAt(this.line.length - 1) !== 13) throw new MalformedResponse("a chunk size or trailer line ends in a bare LF");
    const line = this.line.slice(0, -1);
    this.line = "";
    if (this.step === "trailer") {
      if (line === "") this.step = "done";
      else if (!TRAILER_LINE.test(line)) throw new MalformedResponse(`a malformed trailer line ${JSON.stringify(line.slice(0, 40))}`);
      return lf + 1;
    }
    // The whole size, or none: 17 hex digits must not be read as their first 15.
    const hex = CHUNK_SIZE_LINE.exec(line)?.[1];
    if (hex === undefined) throw new MalformedResponse(`a bad chunk size line ${JSON.stringify(line.slice(0, 20))}`);
    this.remaining = Number.parseInt(hex, 16);
    this.step = this.remaining === 0 ? "trailer" : "data";
    return lf + 1;
  }
}
