/**
 * The load generator's reading of a response head: the status, how the body is framed and
 * whether the connection stays open, read straight from the bytes.
 *
 * Why not the gateway's parseResponseHead (src/dataplane/http1/response-head.ts): it checks
 * the whole head with two regular expressions over a latin1 string and rebuilds the head
 * without its hop-by-hop lines, which the bench has no use for. Timed inside runs against
 * forge's gateway and nginx (2-core VM, c=16, Bun 1.4.5), it took 5.0-6.8 us a response,
 * this reader 1.1-1.2 us, the bench's earlier string-based one 2.7-3.4 us. wrk spends ~19 us
 * of CPU on a whole request; on a machine where the generator shares the cores with the
 * proxy it measures, every microsecond of the generator's is taken from the proxy. The
 * limits and the error are the gateway's (MAX_HEAD, MalformedResponse), the body's framing
 * is too (Framing), and what this reader refuses is what parseResponseHead refuses among
 * what it reads: a bad status line, a bad or repeated Content-Length, a Transfer-Encoding
 * whose last coding is not chunked, both framings, a bare LF ending one of those lines, a 101.
 */
import { CRLFCRLF, MAX_HEAD } from "../dataplane/http1/head.ts";
import { MalformedResponse } from "../dataplane/http1/response-head.ts";

/** A complete response head. */
export interface ResponseHead {
  status: number;
  /** Content-Length, or -1. */
  length: number;
  chunked: boolean;
  /** May the connection be reused after this response? */
  keepAlive: boolean;
  /** Where the body starts (after any interim 1xx answers and the final head). */
  bodyStart: number;
}

const CONTENT_LENGTH = Buffer.from("content-length");
const TRANSFER_ENCODING = Buffer.from("transfer-encoding");
const CONNECTION = Buffer.from("connection");
const CLOSE = Buffer.from("close");
const KEEP_ALIVE = Buffer.from("keep-alive");
/** "HTTP/1." */
const HTTP_1 = [72, 84, 84, 80, 47, 49, 46];
/** Content-Length has at most 15 digits (below 2^53), as head.ts's DIGITS says. */
const MAX_LENGTH_DIGITS = 15;

/**
 * Reads the response head at the start of `data`, skipping interim 1xx answers. Returns
 * undefined while the head is not all there; throws MalformedResponse on what it cannot read
 * (the gateway would answer 502 for it).
 */
export function readResponseHead(data: Buffer): ResponseHead | undefined {
  let start = 0;
  for (;;) {
    const end = data.indexOf(CRLFCRLF, start);
    if (end < 0) {
      if (data.length - start > MAX_HEAD) throw new MalformedResponse(`a response head longer than ${MAX_HEAD} bytes`);
      return undefined;
    }
    const status = statusOf(data, start, end);
    if (status >= 200) return fields(data, start, end, status);
    // No Upgrade is ever asked for: a 101 is a server out of step.
    if (status === 101) throw new MalformedResponse("a 101 answer to a request that asked for no upgrade");
    start = end + 4;
  }
}

// --- internal ---

/** "HTTP/1.x NNN" followed by a space or the end of the line. */
function statusOf(data: Buffer, start: number, end: number): number {
  let ok = end - start >= 12;
  for (let i = 0; ok && i < HTTP_1.length; i++) ok = data[start + i] === HTTP_1[i];
  ok &&=
    (data[start + 7] === 48 || data[start + 7] === 49) &&
    data[start + 8] === 32 &&
    (data[start + 12] === 32 || data[start + 12] === 13);
  const d1 = (data[start + 9] ?? 0) - 48;
  const d2 = (data[start + 10] ?? 0) - 48;
  const d3 = (data[start + 11] ?? 0) - 48;
  if (!ok || d1 < 1 || d1 > 9 || d2 < 0 || d2 > 9 || d3 < 0 || d3 > 9) {
    throw new MalformedResponse(`not an HTTP/1 status line: ${JSON.stringify(data.toString("latin1", start, Math.min(end, start + 40)))}`);
  }
  return d1 * 100 + d2 * 10 + d3;
}

/** The framing and keep-alive fields of the head at [start, end), whose status is read. */
function fields(data: Buffer, start: number, end: number, status: number): ResponseHead {
  let length = -1;
  let coding: string | undefined;
  const http11 = data[start + 7] === 49;
  // HTTP/1.1 is kept alive unless it says close; HTTP/1.0 only when it says keep-alive.
  let keepAlive = http11;
  // Each field line starts after an LF; the head ends at `end` (its last line's CR).
  for (let line = data.indexOf(10, start) + 1; line > 0 && line < end + 2; ) {
    const lf = data.indexOf(10, line);
    const next = lf < 0 || lf > end + 1 ? end + 2 : lf + 1;
    const first = (data[line] ?? 0) | 0x20; // lower case of a letter (isField checks the whole name)
    if (first === 99 /* c */ && isField(data, line, CONTENT_LENGTH)) {
      if (length >= 0) throw new MalformedResponse("a repeated content-length");
      length = digits(data, line + CONTENT_LENGTH.length + 1, lineEnd(data, next));
    } else if (first === 116 /* t */ && isField(data, line, TRANSFER_ENCODING)) {
      if (coding !== undefined) throw new MalformedResponse("a repeated transfer-encoding");
      coding = valueOf(data, line + TRANSFER_ENCODING.length + 1, lineEnd(data, next));
    } else if (first === 99 && isField(data, line, CONNECTION)) {
      // Bytes, not a string: nginx sends this line with every response.
      const from = line + CONNECTION.length + 1;
      const to = lineEnd(data, next);
      if (http11 && contains(data, from, to, CLOSE)) keepAlive = false;
      else if (!http11 && contains(data, from, to, KEEP_ALIVE)) keepAlive = true;
    }
    line = next;
  }
  // Chunked, when there, is the last coding ("xchunked" is not chunked); any other coding leaves the body unframed.
  const chunked = coding !== undefined && (coding === "chunked" || /[ \t,]chunked$/.test(coding));
  if (coding !== undefined && !chunked) throw new MalformedResponse(`a transfer-encoding the bench cannot frame: ${JSON.stringify(coding.slice(0, 40))}`);
  if (chunked && length >= 0) throw new MalformedResponse("a response with both transfer-encoding and content-length");
  return { status, length, chunked, keepAlive, bodyStart: end + 4 };
}

/** Where the value of a line that ends before `next` ends: at its CR (a bare LF is how two parsers come to disagree). */
function lineEnd(data: Buffer, next: number): number {
  if (data[next - 2] !== 13) throw new MalformedResponse("a field line ends in a bare LF");
  return next - 2;
}

/** Does the line at `at` start with field `name` (lower case), then a colon? Field names are case-insensitive. */
function isField(data: Buffer, at: number, name: Buffer): boolean {
  if (data[at + name.length] !== 58 /* : */) return false;
  for (let i = 0; i < name.length; i++) {
    if (!sameLetter(data[at + i] ?? 0, name[i] ?? 0)) return false;
  }
  return true;
}

/** Does [from, to) hold `word` (lower case), in any case? */
function contains(data: Buffer, from: number, to: number, word: Buffer): boolean {
  for (let i = from; i + word.length <= to; i++) {
    let j = 0;
    while (j < word.length && sameLetter(data[i + j] ?? 0, word[j] ?? 0)) j++;
    if (j === word.length) return true;
  }
  return false;
}

/** Is byte `b` the byte `lower`, or, when `lower` is a lower-case letter, its capital? */
function sameLetter(b: number, lower: number): boolean {
  return b === lower || (lower >= 97 && lower <= 122 && b === lower - 32);
}

/** A Content-Length value in [from, to): optional whitespace around 1-15 digits, nothing else. */
function digits(data: Buffer, from: number, to: number): number {
  let i = from;
  while (i < to && (data[i] === 32 || data[i] === 9)) i++;
  let value = 0;
  let n = 0;
  for (; i < to; i++, n++) {
    const d = (data[i] ?? 0) - 48;
    if (d < 0 || d > 9) break;
    value = value * 10 + d;
  }
  while (i < to && (data[i] === 32 || data[i] === 9)) i++;
  if (n === 0 || n > MAX_LENGTH_DIGITS || i !== to) throw new MalformedResponse(`a bad content-length: ${JSON.stringify(data.toString("latin1", from, to).slice(0, 40))}`);
  return value;
}

/** A field value in [from, to), trimmed and lower-cased. */
function valueOf(data: Buffer, from: number, to: number): string {
  return data.toString("latin1", from, to).trim().toLowerCase();
}
