/**
 * Request heads, read once and strictly: what the request asks (method, target, framing,
 * upgrade), what it says about its client (forwarded headers, its own request id), and the
 * head as it is passed on (hop-by-hop lines and forge's own header names cut).
 */
import { ErrorCode, ForgeError } from "../../errors.ts";
import { cutRanges, DIGITS } from "./head.ts";

/**
 * A head forge passes on: a method token, a target of visible bytes, HTTP/1.0 or 1.1, then
 * lines of token ":" value, where a value has no control character but tab (so no folded
 * lines, no bare CR or LF, no NUL, no space before a colon). Anything else is a 400.
 */
const REQUEST_HEAD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ [!-~\x80-\xff]+ HTTP\/1\.[01](?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~\x80-\xff]*)*$/;
/** What the gateway's fast path takes on top of that: an origin-form ASCII target and HTTP/1.1. */
const PLAIN_REQUEST_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \/[!-~]* HTTP\/1\.1\r?/;
/**
 * The header lines looked at, found in one case-insensitive pass over the head (no lowercase
 * copy): routing and framing, protocol changes, hop-by-hop fields, and the names forge sets
 * itself (its request ids, client address and control token; x-forwarded-*), which a client
 * never sets for it.
 */
const SPECIAL =
  /\r\n(host|content-length|transfer-encoding|connection|upgrade|expect|keep-alive|proxy-connection|te|trailer|http2-settings|forwarded|x-real-ip|x-forwarded-(?:for|proto|host|prefix)|x-forge-(?:request-id|control|client-ip|client-request-id)):[ \t]*([^\r]*)/gi;
const TRAILING_WS = /[ \t]+$/;
/** Connection tokens taken in one request: more is no client's need, and each costs a pass. */
const MAX_CONNECTION_TOKENS = 32;
/** An absolute-form target's authority. */
const ABSOLUTE_TARGET = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/([^/?# ]*)/;
/** Any header line: its name. */
const LINE = /\r\n([!#$%&'*+.^_`|~0-9A-Za-z-]+):[^\r]*/g;
/** Header names a Connection value may not make hop-by-hop: cutting them would change the request's routing or framing. */
const NEVER_CUT = new Set(["host", "content-length", "transfer-encoding"]);

/**
 * Methods an instance's server (Bun.serve, in the shim and the socket bridge) takes, checked on
 * Bun 1.4.5 by sending each (the rest get the connection closed). Others get 501 from the gateway. CONNECT
 * is not among them: forge is no forward proxy, and its origin-form target would be malformed.
 */
export const SERVED_METHODS = new Set([
  "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH",
  // WebDAV and other registered methods Bun's parser knows
  "ACL", "BIND", "CHECKOUT", "COPY", "LINK", "LOCK", "M-SEARCH", "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE",
  "NOTIFY", "PROPFIND", "PROPPATCH", "PURGE", "QUERY", "REBIND", "REPORT", "SEARCH", "SOURCE", "SUBSCRIBE", "UNBIND",
  "UNLINK", "UNLOCK", "UNSUBSCRIBE",
]);

export function methodNotImplemented(method: string): ForgeError {
  return new ForgeError(ErrorCode.MethodNotImplemented, 501, `method ${JSON.stringify(method.slice(0, 32))} is not implemented`, {
    hint: "methods are case-sensitive (GET, not get); forge serves the standard and WebDAV methods",
  });
}

/** A request head, read. */
export interface RequestHead {
  method: string;
  target: string;
  host: string | undefined;
  /** Content-Length, or -1 (none, or chunked). */
  length: number;
  chunked: boolean;
  /** The client closes after this request (Connection: close, or HTTP/1.0 without keep-alive). */
  close: boolean;
  /** Asks to become a WebSocket: GET, Connection: upgrade, Upgrade: websocket. */
  websocket: boolean;
  /** Expect: 100-continue. */
  expectContinue: boolean;
  /**
   * The shape the gateway's fast path takes: origin-form ASCII target, HTTP/1.1, a body of
   * Content-Length (or none), no Expect, no upgrade but to a WebSocket, no header named in Connection.
   */
  plain: boolean;
  forwardedFor: string | undefined;
  forwardedProto: string | undefined;
  forwardedHost: string | undefined;
  /** The client's own X-Forge-Request-Id: kept apart, never forge's id. */
  clientRequestId: string | undefined;
  /** The head to pass on: without the lines above that are not passed on, without the final CRLFCRLF. */
  kept: string;
}

function badRequest(message: string, hint = "send a well-formed HTTP/1.1 request (RFC 9112)"): ForgeError {
  return new ForgeError(ErrorCode.BadRequest, 400, message, { hint });
}

/**
 * Reads a request head (latin1 text without its final CRLFCRLF). A ForgeError (400) for what
 * no proxy may pass on: malformed lines, two Hosts, a repeated or non-numeric Content-Length,
 * both framings at once, a transfer coding that does not end in chunked, an absolute-form
 * target naming another host than Host (RFC 9112 §3.2, §6.3; RFC 9110 §8.6).
 */
export function parseRequestHead(head: string): RequestHead | ForgeError {
  if (!REQUEST_HEAD.test(head)) return badRequest("the request head is malformed (a bad request line, a bare CR or LF, a control byte, or a space before a colon)");
  const sp1 = head.indexOf(" ");
  const sp2 = head.indexOf(" ", sp1 + 1);
  const method = head.slice(0, sp1);
  const target = head.slice(sp1 + 1, sp2);
  const http11 = head.charCodeAt(sp2 + 8) === 49;
  let plain = PLAIN_REQUEST_LINE.test(head);
  let host: string | undefined;
  let length = -1;
  let coding: string | undefined;
  let connection: string[] | undefined;
  let upgrade: string | undefined;
  let expectContinue = false;
  let forwardedFor: string | undefined;
  let forwardedProto: string | undefined;
  let forwardedHost: string | undefined;
  let clientRequestId: string | undefined;
  // Lines not passed on, as [start, end) ranges (ascending; rarely any).
  let cut: number[] | undefined;
  SPECIAL.lastIndex = 0;
  for (let m = SPECIAL.exec(head); m; m = SPECIAL.exec(head)) {
    const field = (m[1] ?? "").toLowerCase();
    // Only spaces and tabs are a value's edges (trimEnd would also take \xa0, which the next hop keeps).
    const value = (m[2] ?? "").replace(TRAILING_WS, "");
    switch (field) {
      case "host":
        if (host !== undefined) return badRequest("the request has two Host headers");
        host = value;
        continue; // passed on
      case "content-length":
        if (length >= 0 || !DIGITS.test(value)) return badRequest("the request's Content-Length is repeated or not a number");
        length = Number(value);
        continue;
      case "transfer-encoding":
        if (coding !== undefined) return badRequest("the request has two Transfer-Encoding headers");
        coding = value.toLowerCase();
        plain = false;
        continue;
      case "expect":
        if (value.toLowerCase() === "100-continue") expectContinue = true;
        plain = false;
        continue;
      case "connection":
        for (const token of value.toLowerCase().split(",")) {
          const t = token.trim();
          if (t) (connection ??= []).push(t);
        }
        break;
      case "upgrade":
        upgrade = value.toLowerCase();
        break;
      case "x-forwarded-for":
        forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
        break;
      case "x-forwarded-proto":
        forwardedProto ??= value;
        break;
      case "x-forwarded-host":
        forwardedHost ??= value;
        break;
      case "x-forge-request-id":
        clientRequestId ??= value.slice(0, 200);
        break;
      case "http2-settings":
        plain = false;
        break;
      // keep-alive, proxy-connection, te, trailer, forwarded, x-real-ip, x-forwarded-prefix, x-forge-control and the like: cut
    }
    (cut ??= []).push(m.index, m.index + m[0].length);
  }
  if (coding !== undefined) {
    if (length >= 0) return badRequest("the request has both Content-Length and Transfer-Encoding");
    // Only chunked itself: no server behind forge decodes other request codings, and HTTP/1.0 has none (RFC 9112 §6.1).
    if (coding !== "chunked" || head.charCodeAt(sp2 + 8) !== 49) {
      return badRequest(`the request's transfer coding ${JSON.stringify(coding.slice(0, 40))} is not taken`, "send the body with Content-Length, or Transfer-Encoding: chunked over HTTP/1.1");
    }
  }
  if (!target.startsWith("/")) {
    const authority = ABSOLUTE_TARGET.exec(target)?.[1];
    // The target's authority wins over Host (RFC 9112 §3.2.2): two names for one request are refused rather than guessed.
    if (authority !== undefined && host !== undefined && authority.toLowerCase() !== host.toLowerCase()) {
      return badRequest("the request's target names another host than its Host header", "send the same authority in both, or an origin-form target (GET /path)");
    }
  }
  let websocket = false;
  let named: Set<string> | undefined;
  let closeToken = false;
  let keepAliveToken = false;
  if (connection && connection.length > MAX_CONNECTION_TOKENS) return badRequest(`the request's Connection header names more than ${MAX_CONNECTION_TOKENS} options`);
  for (const t of connection ?? []) {
    if (t === "close") closeToken = true;
    else if (t === "keep-alive") keepAliveToken = true;
    else if (t === "upgrade") websocket = upgrade === "websocket" && method === "GET" && http11;
    else (named ??= new Set()).add(t);
  }
  const close = closeToken || (!http11 && !keepAliveToken);
  if (named) {
    // Headers a Connection value names are hop-by-hop too (RFC 9110 §7.6.1).
    plain = false;
    LINE.lastIndex = 0;
    for (let m = LINE.exec(head); m; m = LINE.exec(head)) {
      const name = (m[1] ?? "").toLowerCase();
      if (named.has(name) && !NEVER_CUT.has(name)) (cut ??= []).push(m.index, m.index + m[0].length);
    }
    cut = mergeRanges(cut ?? []);
  }
  if (upgrade !== undefined && !websocket) plain = false;
  return {
    method,
    target,
    host,
    length,
    chunked: coding !== undefined,
    close,
    websocket,
    expectContinue,
    plain,
    forwardedFor,
    forwardedProto,
    forwardedHost,
    clientRequestId,
    kept: cut ? cutRanges(head, cut) : head,
  };
}

/** [start, end) pairs sorted and without overlaps. */
function mergeRanges(cut: number[]): number[] {
  const pairs: [number, number][] = [];
  for (let i = 0; i < cut.length; i += 2) pairs.push([cut[i] ?? 0, cut[i + 1] ?? 0]);
  pairs.sort((a, b) => a[0] - b[0]);
  const out: number[] = [];
  for (const [s, e] of pairs) {
    if (out.length > 0 && s < (out[out.length - 1] ?? 0)) continue; // the same line twice
    out.push(s, e);
  }
  return out;
}
