/** Which function a Host header names, and under which key a client's connections are counted. */

/**
 * The key connections are counted under per client: the address, and for IPv6 its /64 (one
 * host is given a whole /64; counting addresses in it would let one client past the cap).
 */
export function clientKey(address: string): string {
  if (!address.includes(":") || address.startsWith("::ffff:")) return address;
  // Expand "::" to the zero groups it stands for, so that one /64 always gives one key.
  const [left = "", right] = address.split("::");
  const head = left.split(":").filter(Boolean);
  const tail = right === undefined ? [] : right.split(":").filter(Boolean);
  const groups = right === undefined ? head : [...head, ...Array<string>(Math.max(0, 8 - head.length - tail.length)).fill("0"), ...tail];
  return groups.slice(0, 4).join(":").toLowerCase() + "::/64";
}


/** The function a Host header names, or undefined for the apex host. */
export function functionOfHost(host: string, suffix: string): string | undefined {
  if (!isValidHost(host)) return undefined;
  const colon = host.lastIndexOf(":");
  const bare = (colon > host.lastIndexOf("]") ? host.slice(0, colon) : host).toLowerCase();
  if (!bare.endsWith(suffix)) return undefined;
  const label = bare.slice(0, bare.length - suffix.length);
  return label.length > 0 ? label : undefined;
}

/** A Host value: a name or an IPv4 or bracketed IPv6 address, then an optional port up to 65535 (RFC 9110 §7.2). */
const HOST = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})(?::(\d{1,5}))?$/;

export function isValidHost(host: string): boolean {
  const m = HOST.exec(host);
  return m !== null && (m[1] === undefined || Number(m[1]) <= 65535);
}

/** functionOfHost, remembered: clients send the same few Host values again and again. */
export function functionOf(host: string, suffix: string, seen: Map<string, string | undefined>): string | undefined {
  const known = seen.get(host);
  if (known !== undefined || seen.has(host)) return known;
  const name = functionOfHost(host, suffix);
  // Only names worth remembering: a client's stream of odd 64 KB Hosts is not kept.
  if (name !== undefined && host.length <= 255) {
    if (seen.size >= 1024) seen.clear();
    seen.set(host, name);
  }
  return name;
}

