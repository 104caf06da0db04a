/**
 * Who the client is: the peer address, or, behind proxies forge trusts
 * (FORGE_TRUSTED_PROXIES), the address they say they forwarded for. Functions get it as
 * X-Forwarded-For / -Proto / -Host (and -Prefix under /fn/<name>/), and as
 * x-forge-client-ip, which the runtime shim answers `server.requestIP()` and Lambda's
 * `sourceIp` from. What an untrusted client sends in these headers is never passed on.
 */
import { BlockList, isIP } from "node:net";
import { ErrorCode, ForgeError } from "../errors.ts";

export class TrustedProxies {
  private readonly list = new BlockList();
  readonly empty: boolean;

  /** `spec`: addresses and CIDR ranges, comma-separated ("10.0.0.0/8, 127.0.0.1, ::1"). */
  constructor(spec: string | readonly string[] = "") {
    const items = (typeof spec === "string" ? spec.split(",") : spec).map((s) => s.trim()).filter(Boolean);
    for (const item of items) {
      const [address = "", bits] = item.split("/");
      const family = isIP(address);
      if (family === 0 || (bits !== undefined && !/^\d{1,3}$/.test(bits))) {
        throw new ForgeError(ErrorCode.InvalidConfig, 400, `FORGE_TRUSTED_PROXIES: ${JSON.stringify(item)} is not an address or a CIDR range`, {
          hint: "list addresses or ranges, comma-separated: 10.0.0.0/8,192.168.1.5,::1",
        });
      }
      const type = family === 4 ? "ipv4" : "ipv6";
      if (bits === undefined) this.list.addAddress(address, type);
      else this.list.addSubnet(address, Number(bits), type);
    }
    this.empty = items.length === 0;
  }

  has(address: string): boolean {
    if (this.empty) return false;
    const family = isIP(address);
    return family !== 0 && this.list.check(address, family === 4 ? "ipv4" : "ipv6");
  }
}

/** An address as functions see it: IPv4-mapped IPv6 (::ffff:1.2.3.4) as plain IPv4. */
export function displayAddress(address: string): string {
  return address.startsWith("::ffff:") && address.includes(".") ? address.slice(7) : address;
}

/**
 * The client's address and the X-Forwarded-For to send: the peer appended to what a trusted
 * peer forwarded; the client is the rightmost address no trusted proxy holds.
 */
export function clientOf(peer: string, trusted: TrustedProxies, forwardedFor: string | undefined): { client: string; chain: string } {
  if (forwardedFor === undefined || !trusted.has(peer)) return { client: peer, chain: peer };
  const hops = forwardedFor.split(",").map((s) => s.trim()).filter(Boolean);
  let client = peer;
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i] ?? "";
    if (isIP(hop) === 0) break; // not an address: what a proxy forwarded ends here
    client = hop;
    if (!trusted.has(hop)) break;
  }
  return { client, chain: hops.length > 0 ? `${hops.join(", ")}, ${peer}` : peer };
}
