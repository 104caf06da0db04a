/**
 * forge's egress network: one Docker bridge that every forge on an engine shares, through
 * which instances and stem cells reach the outside (DESIGN §2: outbound access by default),
 * while staying apart from everything on this machine:
 *
 * - inter-container communication is off (`com.docker.network.bridge.enable_icc=false`:
 *   Docker drops traffic between two ports of the bridge), so an instance reaches no other
 *   instance on it, whatever the function or the forge;
 * - Docker isolates its bridges from each other (DOCKER-ISOLATION chains), so it reaches no
 *   container of another network either (a database is reached only by the functions bound
 *   to it, on that database's own internal network);
 * - the host itself (forge's gateway port, the host's other services, ports published by
 *   other containers, which docker-proxy serves on the host) is closed by _host-firewall.ts.
 *
 * The bridge device is named after the network (`com.docker.network.bridge.name`), so host
 * rules name a stable interface, and so that the engine refuses a second network with the
 * same bridge: of two forges creating the network at once, one wins and the other takes it.
 * IPv6 is off on it: Docker then disables IPv6 inside the containers (measured:
 * net.ipv6.conf.all.disable_ipv6 = 1 in an instance), so there is no v6 path to guard.
 * The network is never removed by forge: other forges on the engine may be using it.
 */
import type Dockerode from "dockerode";
import { ErrorCode, ForgeError } from "../errors.ts";
import { LABEL } from "./_docker-names.ts";

/** Value of the role label on the egress network. */
export const EGRESS_ROLE = "egress";
/** Linux limits interface names to 15 bytes (IFNAMSIZ - 1); the bridge carries the network's name. */
export const MAX_BRIDGE_NAME = 15;

const ICC = "com.docker.network.bridge.enable_icc";
const BRIDGE_NAME = "com.docker.network.bridge.name";

export interface EgressNetwork {
  name: string;
  id: string;
  /** The bridge device on the engine's host. */
  bridge: string;
  /** True when this call created it (else it was there, made by this or another forge). */
  created: boolean;
}

/**
 * The egress network `name`, created when missing. Safe when several forges start at once
 * (the loser of a create race takes the winner's). A network of that name that is not
 * forge's, or that lets containers talk to each other, is refused rather than used.
 */
export async function ensureEgressNetwork(docker: Dockerode, name: string): Promise<EgressNetwork> {
  if (!/^[a-z0-9][a-z0-9-]*$/.test(name) || name.length > MAX_BRIDGE_NAME) {
    throw new ForgeError(ErrorCode.InvalidConfig, 400, `"${name.slice(0, 40)}" cannot name forge's egress network`, {
      hint: `use at most ${MAX_BRIDGE_NAME} lowercase letters, digits and '-' (the bridge device takes the same name), e.g. forge-egress`,
    });
  }
  for (let attempt = 0; ; attempt++) {
    const found = await find(docker, name);
    if (found) return { ...verified(found, name), created: false };
    try {
      const network = await docker.createNetwork({
        Name: name,
        Driver: "bridge",
        // Best effort on the engine's side; the bridge name below is the real guard.
        CheckDuplicate: true,
        Internal: false,
        EnableIPv6: false,
        Labels: { [LABEL.managed]: "true", [LABEL.role]: EGRESS_ROLE },
        Options: { [BRIDGE_NAME]: name, [ICC]: "false", "com.docker.network.bridge.enable_ip_masquerade": "true" },
      });
      return { name, id: network.id, bridge: name, created: true };
    } catch (err) {
      // Another forge created it between our look and our create: look again, once.
      if (attempt === 0) continue;
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, `could not create forge's egress network ${name}: ${err instanceof Error ? err.message : String(err)}`, {
        hint: `is there a network interface named ${name} already (ip link show ${name})? remove it, or name the network with FORGE_EGRESS_NETWORK`,
        cause: err,
      });
    }
  }
}

// --- internal ---

async function find(docker: Dockerode, name: string): Promise<Dockerode.NetworkInspectInfo | undefined> {
  // The engine's name filter matches substrings: keep the exact name only.
  const all = (await docker.listNetworks({ filters: { name: [name] } })).filter((n) => n.Name === name);
  if (all.length > 1) {
    throw new ForgeError(ErrorCode.DriverUnavailable, 503, `${all.length} Docker networks are named ${name}, so instances cannot name the one to join`, {
      hint: `keep one: docker network ls --filter name=${name}, then docker network rm <id> for the others`,
    });
  }
  return all[0];
}

function verified(network: Dockerode.NetworkInspectInfo, name: string): Omit<EgressNetwork, "created"> {
  const ours = network.Labels?.[LABEL.managed] === "true" && network.Labels?.[LABEL.role] === EGRESS_ROLE;
  if (!ours || network.Driver !== "bridge") {
    throw new ForgeError(ErrorCode.DriverUnavailable, 503, `a Docker network named ${name} exists and is not forge's egress network`, {
      hint: `forge will not put functions on a network it did not make: remove it (docker network rm ${name}) or name forge's with FORGE_EGRESS_NETWORK`,
    });
  }
  if (network.Options?.[ICC] !== "false") {
    throw new ForgeError(ErrorCode.DriverUnavailable, 503, `forge's egress network ${name} lets containers reach each other (${ICC} is not false)`, {
      hint: `it was changed by hand; remove it (docker network rm ${name}, after stopping the containers on it) and forge creates it again`,
    });
  }
  return { name, id: network.Id, bridge: network.Options?.[BRIDGE_NAME] ?? `br-${network.Id.slice(0, 12)}` };
}
