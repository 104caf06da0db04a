/**
 * What every part of the HTTP/1.1 wire layer shares: the limits, the byte patterns, and the
 * one list of hop-by-hop fields (RFC 9110 §7.6.1) that a proxy never passes on.
 */

/** Longest request or response head taken (64 KiB). */
export const MAX_HEAD = 64 * 1024;
export const CRLF = Buffer.from("\r\n");
export const CRLFCRLF = Buffer.from("\r\n\r\n");
export const NON_ASCII = /[^\x00-\x7f]/;
/** A Content-Length value: digits only, at most 15 (below 2^53). */
export const DIGITS = /^\d{1,15}$/;

/**
 * Fields that describe one connection, not the message: never passed on by a proxy. Framing
 * (content-length, transfer-encoding) is on this list too: each hop frames the body itself.
 * Headers named in a Connection value are hop-by-hop as well.
 */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "content-length",
  "expect",
  "http2-settings",
]);

/** Removes the lines at the [start, end) ranges of `cut` (ascending) from a head. */
export function cutRanges(head: string, cut: number[]): string {
  let out = head.slice(0, cut[0]);
  for (let i = 1; i < cut.length; i += 2) out += head.slice(cut[i], i + 1 < cut.length ? cut[i + 1] : head.length);
  return out;
}

export function concat(a: Uint8Array, b: Uint8Array): Buffer {
  return Buffer.concat([a, b], a.length + b.length);
}
