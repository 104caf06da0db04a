/**
 * Warm request latency to a container: over the Unix socket in its bind-mounted folder (what
 * the docker driver does) vs over a port published on 127.0.0.1 (bridge network, through
 * Docker's proxy). Same image, same function, same hardening; sequential keep-alive
 * requests, the two interleaved in rounds so both see the same machine load.
 *
 *   bun src/bench/docker-socket-vs-port.ts [--requests 2000] [--rounds 5]
 */
import { rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import { createConsola } from "consola";
import { createDockerDriver } from "../pool/index.ts";
import { benchEngine, benchImage, freePort, removeBenchImage, row, summarize } from "./_docker-bench.ts";

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { requests: { type: "string", default: "2000" }, rounds: { type: "string", default: "5" } } });
  const requests = Number(values.requests);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(requests) || requests < 1 || !Number.isInteger(rounds) || rounds < 1) {
    process.stderr.write("usage: bun src/bench/docker-socket-vs-port.ts [--requests 2000] [--rounds 5]\n");
    return 1;
  }
  const engine = await benchEngine();
  const { docker } = engine;
  const name = "bench-socket-port";
  const image = await benchImage(engine, name);
  const driver = createDockerDriver({ docker, dataDir: engine.dir, runtimeImage: engine.runtimeImage, logger: createConsola({ level: -999 }) });
  let portContainer: ReturnType<typeof docker.getContainer> | undefined;
  try {
    // Over the socket: an instance as the driver starts it.
    const handle = await driver.start({ id: "benchsock", role: "instance", runtime: "bun", function: name, version: 1, image, bundlePath: engine.bundlePath, env: {}, memoryMb: 256 });
    const socketPath = handle.endpoint.socketPath;

    // Over a published port: the same image serving TCP ($PORT, no FORGE_SOCKET), same limits.
    const hostPort = freePort();
    const created = await docker.createContainer({
      name: `forge-bench-port-${process.pid}`,
      Image: image,
      Env: ["PORT=8080"],
      User: "1000:1000",
      ExposedPorts: { "8080/tcp": {} },
      HostConfig: {
        NetworkMode: "bridge",
        PortBindings: { "8080/tcp": [{ HostIp: "127.0.0.1", HostPort: String(hostPort) }] },
        ReadonlyRootfs: true,
        Tmpfs: { "/tmp": "rw,nosuid,nodev,noexec,size=64m" },
        CapDrop: ["ALL"],
        SecurityOpt: ["no-new-privileges"],
        Memory: 256 * 1024 * 1024,
        MemorySwap: 256 * 1024 * 1024,
      },
    });
    portContainer = created;
    await created.start();
    const portUrl = `http://127.0.0.1:${hostPort}/`;
    for (let i = 0; ; i++) {
      const ok = await fetch(portUrl).then((r) => r.ok, () => false);
      if (ok) break;
      if (i > 2_000) throw new Error("the published-port container never answered");
      await Bun.sleep(5); // waiting for the container to listen, before any timing
    }

    const viaSocket = () => fetch("http://instance/", { unix: socketPath });
    const viaPort = () => fetch(portUrl);
    const time = async (send: () => Promise<Response>, n: number, out: number[]) => {
      for (let i = 0; i < n; i++) {
        const t0 = performance.now();
        const response = await send();
        await response.arrayBuffer();
        out.push((performance.now() - t0) * 1000);
      }
    };
    // Warm both paths (connections, JIT) before measuring.
    await time(viaSocket, 200, []);
    await time(viaPort, 200, []);
    const socket: number[] = [];
    const port: number[] = [];
    for (let r = 0; r < rounds; r++) {
      await time(viaSocket, requests, socket);
      await time(viaPort, requests, port);
    }
    const s = summarize(socket);
    const p = summarize(port);
    const widths = [34, 10, 10, 10];
    const out = [
      `warm sequential keep-alive requests to one container (${rounds} rounds x ${requests}, interleaved), microseconds`,
      row(["path", "median", "p90", "min"], widths),
      row(["unix socket (bind-mounted folder)", s.median.toFixed(0), s.p90.toFixed(0), s.min.toFixed(0)], widths),
      row(["published port 127.0.0.1", p.median.toFixed(0), p.p90.toFixed(0), p.min.toFixed(0)], widths),
      `socket / port median: ${(s.median / p.median).toFixed(2)} (lower is better for the socket)`,
    ];
    process.stdout.write(out.join("\n") + "\n");
    return 0;
  } finally {
    await portContainer?.remove({ force: true }).catch(() => {});
    await driver.dispose();
    await removeBenchImage(engine, name);
    await rm(engine.dir, { recursive: true, force: true });
  }
}

if (import.meta.main) process.exit(await main());
