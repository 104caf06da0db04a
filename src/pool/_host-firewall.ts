/**
 * Closes the Docker host to the containers on forge's egress bridge. Without it an instance
 * reaches every port of the host: through the bridge's gateway address and through the
 * host's other addresses (forge's gateway port when FORGE_HOST is not loopback, databases
 * and caches listening on the host, ports other containers publish, which docker-proxy
 * serves on the host). Traffic to the outside is forwarded (the FORWARD chain, Docker's);
 * traffic to the host itself goes through INPUT, so one chain on INPUT, for packets coming
 * in on the bridge, takes it away:
 *
 *   -A INPUT -i <bridge> -j FORGE-IN-<bridge>             (inserted first, once)
 *   -A FORGE-IN-<bridge> -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
 *   -A FORGE-IN-<bridge> -p udp --dport 53 -j RETURN      (DNS, see below)
 *   -A FORGE-IN-<bridge> -p tcp --dport 53 -j RETURN
 *   -A FORGE-IN-<bridge> -p tcp -j REJECT --reject-with tcp-reset
 *   -A FORGE-IN-<bridge> -j REJECT --reject-with icmp-port-unreachable
 *
 * - RETURN, never ACCEPT: forge only takes away; what it lets through still meets the
 *   host's own INPUT rules and policy.
 * - conntrack: replies to connections the host opened towards a container come back.
 * - DNS: Docker's embedded resolver answers at 127.0.0.11 inside the container (no host
 *   INPUT at all), and forwards other names to the host's resolvers; when such a resolver
 *   runs on the host itself, port 53 must stay open for names to resolve.
 * - REJECT, not DROP: a function that tries gets "connection refused" at once instead of
 *   hanging until its timeout.
 *
 * A second chain, on FORWARD, refuses link-local destinations (169.254.0.0/16: on a cloud
 * host the instance metadata service, which hands out the host's credentials):
 *
 *   -A FORWARD -i <bridge> -j FORGE-OUT-<bridge>          (inserted first, once)
 *   -A FORGE-OUT-<bridge> -d 169.254.0.0/16 -j REJECT
 *
 * The chains' content is written with one `iptables-restore --noflush` (atomic: the chain is
 * created or replaced whole, so two forges starting at once, or an older forge's rules, never
 * leave it half written); the jump is checked (-C) before it is inserted, so a second start
 * adds nothing. `iptables` is the one Docker itself uses (nf_tables or legacy backend alike:
 * the kernel evaluates both). The rules live until reboot; forge writes them at every start.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";

/** The host is guarded, or why not, with the rules an operator can add by hand. */
export type HostGuard = { ok: true; chain: string } | { ok: false; chain: string; problem: string; rules: string };

/** Seconds iptables waits for the xtables lock (Docker and other forges take it too). */
const LOCK_WAIT_SEC = "5";

/** Chain names are limited to 28 characters; bridge names to 15, so this always fits. */
export function chainFor(bridge: string): string {
  return `FORGE-IN-${bridge}`;
}

/**
 * The chain for what instances send through the host (FORWARD): link-local destinations
 * (169.254.0.0/16: a cloud's instance metadata service, which hands out the host's
 * credentials) are refused; the rest of the outside stays reachable.
 */
export function forwardChainFor(bridge: string): string {
  return `FORGE-OUT-${bridge}`;
}

/** Link-local addresses: where clouds serve instance metadata (and credentials). */
const LINK_LOCAL = "169.254.0.0/16";

/** The chains' rules as iptables-restore input (filter table, chains created or replaced). */
export function chainRules(bridge: string): string {
  const chain = chainFor(bridge);
  const out = forwardChainFor(bridge);
  return [
    "*filter",
    `:${out} - [0:0]`,
    `-A ${out} -d ${LINK_LOCAL} -p tcp -j REJECT --reject-with tcp-reset`,
    `-A ${out} -d ${LINK_LOCAL} -j REJECT --reject-with icmp-net-unreachable`,
    `:${chain} - [0:0]`,
    `-A ${chain} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN`,
    `-A ${chain} -p udp --dport 53 -j RETURN`,
    `-A ${chain} -p tcp --dport 53 -j RETURN`,
    `-A ${chain} -p tcp -j REJECT --reject-with tcp-reset`,
    `-A ${chain} -j REJECT --reject-with icmp-port-unreachable`,
    "COMMIT",
    "",
  ].join("\n");
}

/** The rule that sends what comes in on the bridge to the chain. */
export function jumpRule(bridge: string): string[] {
  return ["INPUT", "-i", bridge, "-j", chainFor(bridge)];
}

/** The rule that sends what the bridge's instances send through the host to the forward chain. */
export function forwardJumpRule(bridge: string): string[] {
  return ["FORWARD", "-i", bridge, "-j", forwardChainFor(bridge)];
}

/** The same, as shell commands an operator can run (what forge says when it cannot). */
export function manualRules(bridge: string): string {
  const chain = chainFor(bridge);
  const lines = chainRules(bridge)
    .split("\n")
    .filter((l) => l.startsWith("-A "))
    .map((l) => `iptables ${l}`);
  return [`iptables -N ${chain}`, `iptables -N ${forwardChainFor(bridge)}`, ...lines, `iptables -I ${jumpRule(bridge).join(" ")}`, `iptables -I ${forwardJumpRule(bridge).join(" ")}`].join("\n");
}

/**
 * Installs (or refreshes) the rules for `bridge`. Never throws: a host that cannot be
 * guarded is reported, and forge says so at start.
 */
export async function guardHost(bridge: string): Promise<HostGuard> {
  const chain = chainFor(bridge);
  const fail = (problem: string): HostGuard => ({ ok: false, chain, problem, rules: manualRules(bridge) });
  // Rules here only act on a bridge in this network namespace (the engine runs on this
  // machine, rootful); a remote engine, a VM or rootless Docker keeps its bridge elsewhere.
  if (!existsSync(join("/sys/class/net", bridge))) {
    return fail(`the bridge ${bridge} is not on this machine's network (is the Docker engine remote, in a VM, or rootless?)`);
  }
  const iptables = findIptables();
  if (!iptables) return fail("iptables was not found (looked on PATH, /usr/sbin and /sbin)");
  const restore = join(dirname(iptables), "iptables-restore");
  const written = await run([restore, "-w", LOCK_WAIT_SEC, "--noflush"], chainRules(bridge));
  if (written.code !== 0) return fail(`iptables-restore failed (${written.code}): ${written.stderr.trim() || "no message"}`);
  for (const rule of [jumpRule(bridge), forwardJumpRule(bridge)]) {
    const present = await run([iptables, "-w", LOCK_WAIT_SEC, "-C", ...rule]);
    if (present.code === 0) continue;
    const [table, ...match] = rule;
    // First in its chain: ahead of any broad ACCEPT the host's own rules (or Docker's) may have.
    const inserted = await run([iptables, "-w", LOCK_WAIT_SEC, "-I", table ?? "INPUT", "1", ...match]);
    if (inserted.code !== 0) return fail(`iptables -I ${table} failed (${inserted.code}): ${inserted.stderr.trim() || "no message"}`);
  }
  return { ok: true, chain };
}

/** Removes the jump and the chain of `bridge` (tests and their throwaway bridges). */
export async function unguardHost(bridge: string): Promise<void> {
  const iptables = findIptables();
  if (!iptables) return;
  // Every copy of the jump (two forges racing may both have inserted one).
  while ((await run([iptables, "-w", LOCK_WAIT_SEC, "-D", ...jumpRule(bridge)])).code === 0);
  while ((await run([iptables, "-w", LOCK_WAIT_SEC, "-D", ...forwardJumpRule(bridge)])).code === 0);
  for (const chain of [chainFor(bridge), forwardChainFor(bridge)]) {
    await run([iptables, "-w", LOCK_WAIT_SEC, "-F", chain]);
    await run([iptables, "-w", LOCK_WAIT_SEC, "-X", chain]);
  }
}

// --- internal ---

function findIptables(): string | undefined {
  // sbin is often off a non-login PATH.
  return Bun.which("iptables") ?? ["/usr/sbin/iptables", "/sbin/iptables"].find((p) => existsSync(p));
}

async function run(cmd: string[], stdin?: string): Promise<{ code: number; stderr: string }> {
  try {
    const proc = Bun.spawn(cmd, { stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin), stdout: "ignore", stderr: "pipe" });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    return { code, stderr };
  } catch (err) {
    // Not executable, not found: reported like a failed run.
    return { code: -1, stderr: err instanceof Error ? err.message : String(err) };
  }
}
