import { ErrorCode, ForgeError } from "../../errors.ts";
import { cutRanges, DIGITS } from "./head.ts";

/** A Connection value naming no header: close and keep-alive only. */
const CONNECTION_PLAIN = /^(?:close|keep-alive)(?:[ \t]*,[ \t]*(?:close|keep-alive))*$/;
/** An absolute-form request target's authority and the Host header, when both are there. */
const ABSOLUTE_TARGET = /^[!-~]+ [A-Za-z][A-Za-z0-9+.-]*:\/\/([^/?# ]*)/;
const HOST_LINE = /\r\nhost:[ \t]*([^\r]*?)[ \t]*(?:\r\n|$)/i;

const EXPECT_CONTINUE = /\r\nexpect:[ \t]*100-continue[ \t]*(?:\r\n|$)/i;
const CONTENT_LENGTH_LINE = /\r\ncontent-length:[ \t]*(\d{1,15})[ \t]*(?:\r\n|$)/i;

/** Does a head ask to continue with a body over a function's limit (its Host or path naming a function)? */
export function expectsTooMuch(head: string, max: number, isFunctionHost: (host: string) => boolean): boolean {
  if (!EXPECT_CONTINUE.test(head)) return false;
  const length = Number(CONTENT_LENGTH_LINE.exec(head)?.[1] ?? NaN);
  if (!(length > max)) return false;
  const host = HOST_LINE.exec(head)?.[1] ?? "";
  return isFunctionHost(host) || / \/fn\//.test(head.slice(0, head.indexOf("\r\n")));
}

/** Does an absolute-form target name another authority than the Host header? */
export function hostDisagrees(head: string): boolean {
  const target = ABSOLUTE_TARGET.exec(head)?.[1];
  if (target === undefined) return false;
  const host = HOST_LINE.exec(head)?.[1];
  return host !== undefined && host.toLowerCase() !== target.toLowerCase();
}

/** A parsed request head the fast path can take. */
export interface Head {
  name: string;
  /** The head to send on, without the lines not passed on and without the final CRLFCRLF. */
  out: string;
  method: string;
  length: number;
  close: boolean;
}

/**
 * A whole request head the fast path takes, checked in one pass: method token, an
 * origin-form target, HTTP/1.1, then lines of token ":" value, where a value has no control
 * character but tab (so no folded lines, no bare CR or LF, no space before a colon).
 */
const REQUEST_HEAD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \/[!-~]* HTTP\/1\.1(?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t -~\x80-\xff]*)*$/;
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

/**
 * The request headers the fast path looks at, found in one case-insensitive pass over the
 * head (no lowercase copy): routing and framing, what sends a request to Bun.serve instead
 * (transfer codings, protocol changes), and what is not passed on (hop-by-hop, forge's id).
 */
const REQUEST_SPECIAL = /\r\n(host|content-length|transfer-encoding|upgrade|expect|http2-settings|connection|keep-alive|proxy-connection|te|x-forge-request-id|x-forge-control):[ \t]*([^\r]*)/gi;
/** Parses a request head (latin1 text without the final CRLFCRLF); undefined: not for the fast path. */
export function parseRequest(head: string, route: (host: string) => string | undefined): Head | undefined {
  if (!REQUEST_HEAD.test(head)) return undefined;
  let host: string | undefined;
  let length = -1;
  let close = false;
  // Lines not passed on, as [start, end) ranges (rarely any).
  let cut: number[] | undefined;
  REQUEST_SPECIAL.lastIndex = 0;
  for (let m = REQUEST_SPECIAL.exec(head); m; m = REQUEST_SPECIAL.exec(head)) {
    const field = (m[1] ?? "").toLowerCase();
    const value = (m[2] ?? "").trimEnd();
    switch (field) {
      case "host":
        if (host !== undefined) return undefined;
        host = value;
        break;
      case "content-length":
        if (length >= 0 || !DIGITS.test(value)) return undefined;
        length = Number(value);
        break;
      case "connection": {
        const v = value.toLowerCase();
        if (v.includes("upgrade")) return undefined;
        // Headers it names are hop-by-hop too (RFC 9110 §7.6.1): cut by the tunnel's path.
        if (!CONNECTION_PLAIN.test(v)) return undefined;
        if (v.includes("close")) close = true;
        (cut ??= []).push(m.index, m.index + m[0].length);
        break;
      }
      case "x-forge-request-id": // forge's own id replaces it
      case "x-forge-control": // the shim's control routes are forge's alone
        (cut ??= []).push(m.index, m.index + m[0].length);
        break;
      case "keep-alive":
      case "proxy-connection":
      case "te":
        (cut ??= []).push(m.index, m.index + m[0].length);
        break;
      default:
        return undefined; // transfer-encoding, upgrade, expect, http2-settings
    }
  }
  if (!host) return undefined;
  const name = route(host);
  if (name === undefined) return undefined;
  const method = head.slice(0, head.indexOf(" "));
  let out = cut ? cutRanges(head, cut) : head;
  if (length < 0 && (method === "POST" || method === "PUT" || method === "PATCH")) out += "\r\ncontent-length: 0";
  return { name, out, method, length: Math.max(0, length), close };
}

