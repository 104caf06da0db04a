import { cutRanges, CRLFCRLF, DIGITS, MAX_HEAD } from "./head.ts";

/** Transfer codings forge can frame: a list of tokens whose last is chunked. */
const TRANSFER_CODINGS = /^(?:[!#$%&'*+.^_`|~0-9a-z-]+[ \t]*,[ \t]*)*chunked$/;
/**
 * A response head as forge takes it: HTTP/1.x, a three-digit status, then lines of
 * token ":" value with no NUL, CR or LF in a value (no folded line, no space before a colon);
 * other control bytes pass, as nginx lets them (fetch's Headers allow them, and a function
 * may echo one into a header). Anything else from an instance is a 502, as nginx answers.
 */
const RESPONSE_HEAD = /^HTTP\/1\.[01] [1-9]\d\d(?: [^\x00\r\n]*)?(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00\r\n]*)*$/;
/** The response headers looked at: framing, and what is not passed on (hop-by-hop, forge's own). */
const RESPONSE_SPECIAL = /\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|x-forge-request-id|x-forge-start):[ \t]*([^\r]*)/gi;

/** A response head from an instance, checked as nginx checks it. */
export type ResponseHead =
  | { complete: false; /** Where the (final) head being waited for starts: interim answers before it are done. */ from: number }
  | {
      complete: true;
      status: number;
      /** The head without its hop-by-hop lines and without the final CRLFCRLF. */
      out: string;
      /** Content-Length, or -1. */
      length: number;
      chunked: boolean;
      /** May the connection to the instance be reused after this response? */
      keepAlive: boolean;
      /** Interim answers (1xx) before the final head end here (0: none), to be passed on as they are. */
      interimEnd: number;
      /** Where the body starts in the data. */
      bodyStart: number;
    };

/** An instance answered with bytes that are not a valid HTTP/1 response: a 502, the instance not suspected of a crash. */
export class MalformedResponse extends Error {}

/**
 * Parses the response head at the start of `data` (after any interim 1xx answers). Throws on
 * anything malformed, so that the request is a 502 (RFC 9112 §5, §6.3; RFC 9110 §5.5, §15.2):
 * a status that is not three digits, a bare LF, NUL or CR, a folded line, a space before a
 * colon, a repeated or non-numeric Content-Length, a Transfer-Encoding whose last coding is
 * not chunked, both framings at once, a 101 to a request that asked for no upgrade (with
 * `upgrade`, a 101 to websocket is the final head: what follows it is the new protocol's).
 */
export function parseResponseHead(data: Buffer, upgrade = false): ResponseHead {
  let start = 0;
  let end: number;
  let head: string;
  let status: number;
  for (;;) {
    end = data.indexOf(CRLFCRLF, start);
    if (end < 0) {
      if (data.length - start > MAX_HEAD) throw new MalformedResponse(`a response head longer than ${MAX_HEAD} bytes`);
      return { complete: false, from: start };
    }
    head = data.toString("latin1", start, end);
    if (!RESPONSE_HEAD.test(head)) throw new MalformedResponse(`a malformed response head: ${JSON.stringify(head.slice(0, 60))}`);
    status = Number(head.slice(9, 12));
    if (status >= 200) break;
    if (status === 101) {
      // The switch to the protocol asked for (a WebSocket); unasked, an instance out of step.
      if (!upgrade) throw new MalformedResponse("a 101 answer to a request that asked for no upgrade");
      if (!/\r\nupgrade:[ \t]*websocket[ \t]*(?:\r\n|$)/i.test(head)) throw new MalformedResponse("a 101 answer that does not switch to websocket");
      break;
    }
    start = end + 4;
  }
  let length = -1;
  let coding: string | undefined;
  let connection = "";
  let cut: number[] | undefined;
  RESPONSE_SPECIAL.lastIndex = 0;
  for (let m = RESPONSE_SPECIAL.exec(head); m; m = RESPONSE_SPECIAL.exec(head)) {
    const field = (m[1] ?? "").toLowerCase();
    const value = (m[2] ?? "").replace(/[ \t]+$/, "");
    if (field === "content-length") {
      if (length >= 0 || !DIGITS.test(value)) throw new MalformedResponse("a repeated or bad content-length in the response");
      length = Number(value);
    } else if (field === "transfer-encoding") {
      if (coding !== undefined) throw new MalformedResponse("a repeated transfer-encoding in the response");
      coding = value.toLowerCase();
      // Codings are tokens; chunked, when there, is the last one ("xchunked" is not chunked).
      if (!TRANSFER_CODINGS.test(coding)) throw new MalformedResponse(`a transfer-encoding forge cannot frame: ${JSON.stringify(value.slice(0, 40))}`);
    } else {
      if (field === "connection") connection = value.toLowerCase();
      (cut ??= []).push(m.index, m.index + m[0].length);
    }
  }
  // Both would leave the body's end to whichever one a reader believes (RFC 9112 §6.3).
  if (coding !== undefined && length >= 0) throw new MalformedResponse("a response with both transfer-encoding and content-length");
  const keepAlive = head.charCodeAt(7) === 49 /* HTTP/1.1 */ ? !connection.includes("close") : connection.includes("keep-alive");
  return { complete: true, status, out: cut ? cutRanges(head, cut) : head, length, chunked: coding !== undefined, keepAlive, interimEnd: start, bodyStart: end + 4 };
}

