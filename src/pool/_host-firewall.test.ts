/** The host firewall's rules as text (no root needed); installing them is test/network-docker.test.ts's. */
import { describe, expect, test } from "bun:test";
import { chainFor, chainRules, guardHost, manualRules } from "./_host-firewall.ts";

describe("host firewall", () => {
  test("one chain per bridge, whose name fits iptables' 28 characters for any bridge name", () => {
    expect(chainFor("forge-egress")).toBe("FORGE-IN-forge-egress");
    expect(chainFor("a".repeat(15)).length).toBeLessThanOrEqual(28);
  });

  test("the chain lets replies and DNS go on to the host's own rules, and refuses the rest at once; link-local addresses are refused on the way out", () => {
    expect(chainRules("forge-egress")).toBe(
      [
        "*filter",
        ":FORGE-OUT-forge-egress - [0:0]",
        "-A FORGE-OUT-forge-egress -d 169.254.0.0/16 -p tcp -j REJECT --reject-with tcp-reset",
        "-A FORGE-OUT-forge-egress -d 169.254.0.0/16 -j REJECT --reject-with icmp-net-unreachable",
        ":FORGE-IN-forge-egress - [0:0]",
        "-A FORGE-IN-forge-egress -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A FORGE-IN-forge-egress -p udp --dport 53 -j RETURN",
        "-A FORGE-IN-forge-egress -p tcp --dport 53 -j RETURN",
        "-A FORGE-IN-forge-egress -p tcp -j REJECT --reject-with tcp-reset",
        "-A FORGE-IN-forge-egress -j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
        "",
      ].join("\n"),
    );
  });

  test("what an operator runs by hand when forge cannot: the chains, their rules, then the jumps", () => {
    const lines = manualRules("fn-out").split("\n");
    expect(lines.slice(0, 2)).toEqual(["iptables -N FORGE-IN-fn-out", "iptables -N FORGE-OUT-fn-out"]);
    expect(lines.slice(-2)).toEqual(["iptables -I INPUT -i fn-out -j FORGE-IN-fn-out", "iptables -I FORWARD -i fn-out -j FORGE-OUT-fn-out"]);
    expect(lines.filter((l) => l.startsWith("iptables -A FORGE-IN-fn-out ")).length).toBe(5);
  });

  test("a bridge that is not on this machine is reported, not thrown, with the rules to add", async () => {
    const guard = await guardHost("fg-nosuchbr");
    expect(guard.ok).toBe(false);
    if (guard.ok) return;
    expect(guard.problem).toContain("not on this machine's network");
    expect(guard.rules).toContain("iptables -I INPUT -i fg-nosuchbr -j FORGE-IN-fg-nosuchbr");
  });
});
