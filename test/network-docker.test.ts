/**
 * Outbound network on the docker driver, end to end: a real `forge up` (FORGE_DRIVER=docker,
 * listening on every address so that its port is there to be reached), real deploys, the
 * real engine and the host's real firewall.
 *
 * "The internet" is an HTTP server in another container on this machine, on a link of its
 * own: a veth pair the test plumbs between the host and the container's network namespace,
 * addressed from 198.18.0.0/15 (RFC 2544's benchmarking range: never routed on the internet,
 * here a link on this machine only). An instance's packets to it take exactly the path to
 * the outside: out of the egress bridge, through the host's FORWARD chain (Docker's own rule
 * for traffic leaving a bridge), masqueraded, out of a non-Docker interface. The obvious
 * alternatives would not stand for the internet: a port published on the host's address is
 * served by docker-proxy on the host itself, which forge closes to instances (as it must);
 * a container on another Docker network is cut off by Docker's isolation between bridges;
 * and one on the egress network is cut off by the disabled inter-container traffic.
 *
 * Needs root (the veth, and forge's iptables rules). Skipped without an engine or root,
 * failed under CI.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { isCI } from "../src/config.ts";
import { createDockerDriver } from "../src/pool/index.ts";
import { unguardHost } from "../src/pool/_host-firewall.ts";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker } from "./_services.ts";

const engine = await requireDocker();
const EGRESS = "forge-egress";

/** Root and the tools to plumb a link: else skipped (under CI: failed). */
function hostTools(): boolean {
  const has = (tool: string) => Bun.which(tool) !== null || existsSync(`/usr/sbin/${tool}`) || existsSync(`/sbin/${tool}`);
  const missing = [process.getuid?.() === 0 ? "" : "root", has("ip") ? "" : "ip (iproute2)", has("nsenter") ? "" : "nsenter", has("iptables") ? "" : "iptables"].filter(Boolean);
  if (missing.length === 0) return true;
  if (isCI()) throw new Error(`the network tests need ${missing.join(", ")} under CI`);
  console.warn(`skipping: the network tests need ${missing.join(", ")}`);
  return false;
}

/** Runs a command; throws with its stderr when it fails. */
async function sh(...cmd: string[]): Promise<string> {
  const proc = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`${cmd.join(" ")} exited with ${code}: ${err.trim()}`);
  return out;
}

/** A function that reports what it can reach, told what to try by its query. */
const PROBE = `
import { connect } from "node:net";
import { lookup } from "node:dns/promises";
import { networkInterfaces } from "node:os";
import { readdirSync } from "node:fs";

let listener;
const ipv4 = () => Object.entries(networkInterfaces()).flatMap(([name, list]) => (list ?? []).filter((a) => a.family === "IPv4" && !a.internal).map((a) => ({ name, address: a.address })));

function tcp(options, ms) {
  return new Promise((resolve) => {
    const socket = connect(options);
    const timer = setTimeout(() => { socket.destroy(); resolve({ ok: false, error: "timeout" }); }, ms);
    socket.once("connect", () => { clearTimeout(timer); socket.destroy(); resolve({ ok: true }); });
    socket.once("error", (e) => { clearTimeout(timer); resolve({ ok: false, error: e.code ?? e.message }); });
  });
}

export default {
  async fetch(request) {
    const q = new URL(request.url).searchParams;
    const ms = Number(q.get("ms") ?? 1500);
    switch (q.get("op")) {
      case "fetch":
        try {
          const r = await fetch(q.get("url"), { signal: AbortSignal.timeout(ms) });
          return Response.json({ ok: true, status: r.status, body: await r.text() });
        } catch (e) {
          return Response.json({ ok: false, error: e.code ?? e.name });
        }
      case "tcp":
        return Response.json(await tcp({ host: q.get("host"), port: Number(q.get("port")) }, ms));
      case "unix":
        return Response.json(await tcp({ path: q.get("path") }, ms));
      case "dns":
        try {
          return Response.json({ ok: true, address: (await lookup(q.get("name"), { family: 4 })).address });
        } catch (e) {
          return Response.json({ ok: false, error: e.code ?? e.message });
        }
      case "listen":
        listener ??= Bun.listen({ hostname: "0.0.0.0", port: 0, socket: { open(s) { s.end("peer\\n"); }, data() {} } });
        return Response.json({ port: listener.port, ipv4: ipv4() });
      default:
        return Response.json({ ipv4: ipv4(), run: readdirSync("/run/forge").sort() });
    }
  },
};
`;

interface Reach {
  ok: boolean;
  error?: string;
  status?: number;
  body?: string;
  address?: string;
}

if (!engine || !hostTools()) {
  test.skip("outbound network on the docker driver (no Docker engine, or not root)", () => {});
} else {
  const { docker, runtimeImage } = engine;
  const data = tempDir("forge-net-docker-");
  const fns = tempDir("forge-net-fns-");
  const tag = crypto.randomUUID().slice(0, 6);
  // A random /30 of 198.18.0.0/15 (host .1, server .2), so runs side by side do not collide.
  const net = `198.${18 + Math.floor(Math.random() * 2)}.${Math.floor(Math.random() * 256)}.${4 * Math.floor(Math.random() * 64)}`;
  const [a, b, c, d] = net.split(".").map(Number) as [number, number, number, number];
  const hostSide = `${a}.${b}.${c}.${d + 1}`;
  const serverIp = `${a}.${b}.${c}.${d + 2}`;
  const vethHost = `fgn${tag}h`;
  const vethServer = `fgn${tag}s`;
  const outside = `http://${serverIp}:8080/`;
  // The same server on a link-local address too: where a cloud serves instance metadata.
  const linkLocalNet = `169.254.${200 + Math.floor(Math.random() * 50)}.${4 * Math.floor(Math.random() * 63)}`;
  const [, , lc, ld] = linkLocalNet.split(".").map(Number) as [number, number, number, number];
  const linkLocal = `http://169.254.${lc}.${ld + 2}:8080/`;
  let server: ReturnType<typeof docker.getContainer> | undefined;
  let forge: ForgeProcess;

  /** Asks a function to try something; its answer. */
  const probe = async (fn: string, query: Record<string, string>): Promise<Reach> => {
    const r = await forge.fn(fn, `/?${new URLSearchParams(query)}`);
    if (r.status !== 200) throw new Error(`${fn} answered ${r.status}: ${await r.text()}`);
    return (await r.json()) as Reach;
  };

  const fnDir = (name: string, config: Record<string, unknown>): string => {
    const dir = join(fns, name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "index.js"), PROBE);
    writeFileSync(join(dir, "forge.json"), JSON.stringify({ name, entry: "index.js", ...config }));
    return dir;
  };

  beforeAll(async () => {
    // 1. "The internet": a container with no network of Docker's, then a link of the test's own.
    server = await docker.createContainer({
      name: `forge-test-outside-${tag}`,
      Image: runtimeImage,
      Cmd: ["/usr/local/bin/bun", "-e", `Bun.serve({ hostname: "0.0.0.0", port: 8080, fetch: () => new Response("hello from the outside") })`],
      User: "1000:1000",
      Labels: { "dev.forge.test": "network-docker" },
      HostConfig: { NetworkMode: "none" },
    });
    await server.start();
    const pid = String((await server.inspect()).State.Pid);
    await sh("ip", "link", "add", vethHost, "type", "veth", "peer", "name", vethServer);
    await sh("ip", "link", "set", vethServer, "netns", pid);
    await sh("ip", "addr", "add", `${hostSide}/30`, "dev", vethHost);
    await sh("ip", "link", "set", vethHost, "up");
    await sh("nsenter", "-t", pid, "-n", "ip", "addr", "add", `${serverIp}/30`, "dev", vethServer);
    await sh("nsenter", "-t", pid, "-n", "ip", "link", "set", vethServer, "up");
    await sh("ip", "addr", "add", `169.254.${lc}.${ld + 1}/30`, "dev", vethHost);
    await sh("nsenter", "-t", pid, "-n", "ip", "addr", "add", `169.254.${lc}.${ld + 2}/30`, "dev", vethServer);
    await until(() => fetch(outside).then((r) => r.ok, () => false), 10_000, "the outside server to answer the host");
    await until(() => fetch(linkLocal).then((r) => r.ok, () => false), 10_000, "the outside server to answer the host on its link-local address");

    // 2. forge on every address, and three functions deployed side by side.
    forge = await startForge({ dataDir: data, env: { FORGE_DRIVER: "docker", FORGE_HOST: "0.0.0.0", FORGE_EGRESS_NETWORK: EGRESS } });
    const deploys = await Promise.all([
      cli(forge, ["deploy", fnDir("probe", {})]),
      cli(forge, ["deploy", fnDir("probe-none", { network: "none" })]),
      cli(forge, ["deploy", fnDir("peer", {})]),
    ]);
    for (const r of deploys) if (r.code !== 0) throw new Error(`deploy failed:\n${r.stdout}\n${r.stderr}`);
  }, 60_000);

  afterAll(async () => {
    try {
      if (forge) {
        for (const name of ["probe", "probe-none", "peer"]) await cli(forge, ["delete", name]);
        await forge.stop();
      }
      const left = await docker.listContainers({ all: true, filters: { label: ["dev.forge.managed=true"] } });
      for (const c of left.filter((c) => (c.Labels?.["dev.forge.dir"] ?? "").startsWith(`${data}/`))) {
        await docker.getContainer(c.Id).remove({ force: true }).catch(() => {});
      }
    } finally {
      // The container's end takes its end of the veth, and the pair with it.
      await server?.remove({ force: true }).catch(() => {});
      await sh("ip", "link", "del", vethHost).catch(() => {});
      data[Symbol.dispose]();
      fns[Symbol.dispose]();
    }
  });

  describe("outbound network on the docker driver", () => {
    test("forge says at start that functions reach the outside and not the host, and the host rules are in place", async () => {
      expect(forge.output()).toContain(`egress: functions reach the outside through the Docker network ${EGRESS}`);
      await sh("iptables", "-w", "5", "-C", "INPUT", "-i", EGRESS, "-j", `FORGE-IN-${EGRESS}`);
      const network = await docker.getNetwork(EGRESS).inspect();
      expect(network.Options).toMatchObject({ "com.docker.network.bridge.enable_icc": "false" });
      expect(network.Labels).toMatchObject({ "dev.forge.managed": "true", "dev.forge.role": "egress" });
    });

    test("a function fetches from a server on another machine; with network none the same fetch fails", async () => {
      const [withEgress, without] = await Promise.all([probe("probe", { op: "fetch", url: outside }), probe("probe-none", { op: "fetch", url: outside })]);
      expect(withEgress).toEqual({ ok: true, status: 200, body: "hello from the outside" });
      expect(without.ok).toBe(false);
      // No interface but loopback, so nothing to try with.
      expect(((await probe("probe-none", {})) as unknown as { ipv4: unknown[] }).ipv4).toEqual([]);
    });

    test("a link-local address (a cloud's metadata service) is refused, though the host reaches it", async () => {
      const tried = await probe("probe", { op: "fetch", url: linkLocal });
      expect(tried.ok).toBe(false);
      await sh("iptables", "-w", "5", "-C", "FORWARD", "-i", EGRESS, "-j", `FORGE-OUT-${EGRESS}`);
    });

    test("an instance cannot open forge's port, through the bridge's gateway or any address of the host", async () => {
      const gateway = (await docker.getNetwork(EGRESS).inspect()).IPAM?.Config?.[0]?.Gateway;
      expect(gateway).toBeString();
      // Every address of the host but those of other tests' networks and links, which come and go meanwhile.
      const hostAddresses = Object.entries(networkInterfaces())
        .filter(([name]) => !name.startsWith("br-") && !(name.startsWith("fgn") && name !== vethHost))
        .flatMap(([, list]) => list ?? [])
        .filter((i) => i.family === "IPv4" && !i.internal)
        .map((i) => i.address);
      expect(hostAddresses).toContain(gateway ?? "");
      // The port is open on each of them: the host itself connects.
      for (const host of hostAddresses) {
        const socket = await Bun.connect({ hostname: host, port: forge.port, socket: { data() {} } });
        socket.end();
      }
      const tries = await Promise.all(hostAddresses.map(async (host) => ({ host, ...(await probe("probe", { op: "tcp", host, port: String(forge.port) })) })));
      for (const t of tries) expect({ host: t.host, ok: t.ok }).toEqual({ host: t.host, ok: false });
      // Refused at once by forge's rule, not left to time out.
      expect(new Set(tries.map((t) => t.error))).toEqual(new Set(["ECONNREFUSED"]));
    });

    test("an instance cannot reach another function's instance, though the host can", async () => {
      const peer = (await (await forge.fn("peer", "/?op=listen")).json()) as { port: number; ipv4: { address: string }[] };
      const address = peer.ipv4[0]?.address ?? "";
      expect(address).not.toBe("");
      const socket = await Bun.connect({ hostname: address, port: peer.port, socket: { data() {} } });
      socket.end();
      const tried = await probe("probe", { op: "tcp", host: address, port: String(peer.port), ms: "1000" });
      expect(tried.ok).toBe(false);
    });

    test("an instance cannot open another instance's socket, nor forge's API socket; it sees its own folder only", async () => {
      const peerAddress = ((await (await forge.fn("peer", "/?op=listen")).json()) as { ipv4: { address: string }[] }).ipv4[0]?.address;
      const onNetwork = Object.values((await docker.getNetwork(EGRESS).inspect()).Containers ?? {}) as { Name: string; IPv4Address: string }[];
      const peerContainer = onNetwork.find((c) => c.IPv4Address.split("/")[0] === peerAddress);
      const peerDir = (await docker.getContainer(peerContainer?.Name ?? "").inspect()).Config.Labels["dev.forge.dir"];
      expect(peerDir).toStartWith(data);
      const [toPeer, toApi] = await Promise.all([probe("probe", { op: "unix", path: `${peerDir}/s.sock` }), probe("probe", { op: "unix", path: join(data, "api.sock") })]);
      expect(toPeer).toEqual({ ok: false, error: "ENOENT" });
      expect(toApi).toEqual({ ok: false, error: "ENOENT" });
      expect(((await probe("probe", {})) as unknown as { run: string[] }).run).toContain("s.sock");
    });

    test("names resolve through Docker's embedded resolver despite the host rules", async () => {
      const peerAddress = ((await (await forge.fn("peer", "/?op=listen")).json()) as { ipv4: { address: string }[] }).ipv4[0]?.address;
      const onNetwork = Object.values((await docker.getNetwork(EGRESS).inspect()).Containers ?? {}) as { Name: string; IPv4Address: string }[];
      const name = onNetwork.find((c) => c.IPv4Address.split("/")[0] === peerAddress)?.Name ?? "";
      expect(await probe("probe", { op: "dns", name })).toEqual({ ok: true, address: peerAddress ?? "" });
    });
  });

  describe("the docker driver and the egress network", () => {
    const quiet = createConsola({ level: -999 });

    test("cells join exactly the networks their spec names, as instances do", async () => {
      await using dir = tempDir("forge-net-cells-");
      await using driver = createDockerDriver({ docker, dataDir: dir, runtimeImage, egressNetwork: EGRESS, logger: quiet, stopGraceSec: 1 });
      const [onEgress, bare] = await Promise.all([
        driver.start({ id: `c${tag}e`, role: "cell", runtime: "bun", env: {}, memoryMb: 128, networks: [EGRESS] }),
        driver.start({ id: `c${tag}n`, role: "cell", runtime: "bun", env: {}, memoryMb: 128 }),
      ]);
      const inspect = async (id: string) => docker.getContainer(driver.containersOf(id)[0] ?? "").inspect();
      const [e, n] = await Promise.all([inspect(onEgress.id), inspect(bare.id)]);
      expect(Object.keys(e.NetworkSettings.Networks)).toEqual([EGRESS]);
      expect(n.HostConfig.NetworkMode).toBe("none");
    }, 30_000);

    test("two forges making a new egress network at once end up on the same one", async () => {
      const name = `fgt-${tag}`;
      await using dir = tempDir("forge-net-race-");
      const drivers = [0, 1].map(() => createDockerDriver({ docker, dataDir: dir, runtimeImage, egressNetwork: name, logger: quiet }));
      try {
        const [one, two] = await Promise.all(drivers.map((driver) => driver.prepareEgress()));
        expect([one?.created, two?.created].sort()).toEqual([false, true]);
        expect(one?.host).toMatchObject({ ok: true });
        expect(two?.host).toMatchObject({ ok: true });
        const named = (await docker.listNetworks({ filters: { name: [name] } })).filter((n) => n.Name === name);
        expect(named.length).toBe(1);
        // One jump to forge's chain, however many forges wrote the rules.
        const input = await sh("iptables", "-w", "5", "-S", "INPUT");
        expect(input.split("\n").filter((l) => l.includes(`-i ${name} `)).length).toBe(1);
      } finally {
        for (const driver of drivers) await driver.dispose();
        await docker.getNetwork(name).remove().catch(() => {});
        await unguardHost(name);
      }
    }, 30_000);

    test("a network of forge's egress name that forge did not make is refused, with a hint", async () => {
      const name = `fgx-${tag}`;
      await docker.createNetwork({ Name: name });
      await using dir = tempDir("forge-net-foreign-");
      await using driver = createDockerDriver({ docker, dataDir: dir, runtimeImage, egressNetwork: name, logger: quiet });
      try {
        const error = await driver.prepareEgress().catch((err: unknown) => err);
        expect(error).toMatchObject({ code: "driver_unavailable", message: expect.stringContaining("is not forge's egress network") });
        expect((error as { hint: string }).hint).toContain("FORGE_EGRESS_NETWORK");
      } finally {
        await docker.getNetwork(name).remove().catch(() => {});
      }
    });
  });
}
