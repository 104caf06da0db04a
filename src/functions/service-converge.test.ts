/**
 * What a node's FunctionService does with the cluster's state (DESIGN §9), over SQLite in
 * memory and a pool that only records what it was told: converge() must bring the pool to
 * what the store says whatever happened before, including a local change that switched the
 * pool and then could not be written to the store.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { packArtifact, resolveConfig } from "../build/index.ts";
import type { PoolManager, PoolSpec } from "../pool/index.ts";
import { asyncStore, openStore, type AsyncStore, type SharedRepo } from "../store/index.ts";
import { FunctionService } from "./service.ts";

const logger = createConsola({ level: -999 });

/** A pool that runs nothing: it remembers the spec of each function's last activation. */
function recordingPool() {
  const running = new Map<string, PoolSpec>();
  const activations: { spec: PoolSpec; verify: boolean }[] = [];
  const pool = {
    async activate(spec: PoolSpec, options: { verify?: boolean } = {}) {
      activations.push({ spec, verify: options.verify !== false });
      running.set(spec.function, spec);
      return { kind: "fetch" as const, concurrency: spec.concurrency };
    },
    updateLive(fn: string, patch: Partial<PoolSpec>) {
      const spec = running.get(fn);
      if (spec) running.set(fn, { ...spec, ...patch });
    },
    pool: (fn: string) => (running.has(fn) ? {} : undefined),
    async remove(fn: string) {
      running.delete(fn);
    },
  };
  return { pool: pool as unknown as PoolManager, running, activations };
}

const shared: SharedRepo = {
  putArtifact: async () => {},
  getArtifact: async () => undefined,
  hasArtifact: async () => true,
  pruneArtifacts: async () => 0,
  setting: async (_k, v) => v,
  heartbeat: async () => {},
  nodes: async () => [],
  removeNode: async () => {},
};

describe("FunctionService.converge", () => {
  let dataDir = "";
  let sqlite: ReturnType<typeof openStore>;
  let store: AsyncStore;

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), "forge-converge-"));
    sqlite = openStore(":memory:");
    store = asyncStore(sqlite);
  });
  afterEach(() => {
    sqlite.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  /** Versions 1 and 2 of greet, both loaded once, 2 active; their folders on this node. */
  async function twoVersions(): Promise<void> {
    const config = resolveConfig("greet", {});
    await store.functions.ensure("greet", config);
    for (const v of [1, 2]) {
      const artifact = `functions/greet/bundles/v${v}`;
      mkdirSync(join(dataDir, artifact), { recursive: true });
      writeFileSync(join(dataDir, artifact, "bundle.mjs"), "export default {}");
      await store.versions.create("greet", { digest: `d${v}`, config, artifact, image: null });
      await store.versions.settle("greet", v, { status: "ready" });
    }
    await store.versions.activate("greet", 2);
  }

  function service(s: AsyncStore, pool: PoolManager): FunctionService {
    return new FunctionService({ store: s, pool, logger, dataDir, urlOf: (n) => `http://${n}.localhost`, limits: { maxBytes: 1 << 20, maxFiles: 100 }, cluster: { shared, announce: async () => {} } });
  }

  test("a rollback that switched the pool but could not be stored is undone by the next converge", async () => {
    await twoVersions();
    const { pool, running } = recordingPool();
    let storeDown = false;
    const flaky: AsyncStore = {
      ...store,
      versions: {
        ...store.versions,
        activate: async (fn, v) => {
          if (storeDown) throw new Error("connect ECONNREFUSED 10.0.0.5:5432");
          return store.versions.activate(fn, v);
        },
      },
    };
    const fns = service(flaky, pool);
    await fns.restore();
    expect(running.get("greet")?.version).toBe(2);
    storeDown = true;
    await expect(fns.rollback("greet")).rejects.toThrow();
    // The pool was switched to v1 before the store refused: the cluster (and the store) say v2.
    expect((await store.functions.get("greet"))?.activeVersion).toBe(2);
    storeDown = false;
    await fns.converge("greet");
    expect(running.get("greet")?.version).toBe(2);
  });

  test("a PATCH of env that restarted the instances but could not be stored is undone by the next converge", async () => {
    await twoVersions();
    const { pool, running } = recordingPool();
    let storeDown = false;
    const flaky: AsyncStore = {
      ...store,
      functions: {
        ...store.functions,
        updateConfig: async (fn, c) => {
          if (storeDown) throw new Error("connect ECONNREFUSED 10.0.0.5:5432");
          return store.functions.updateConfig(fn, c);
        },
      },
    };
    const fns = service(flaky, pool);
    await fns.restore();
    storeDown = true;
    await expect(fns.patch("greet", { env: { A: "1" } })).rejects.toThrow();
    expect(running.get("greet")?.env).toEqual({ A: "1" });
    storeDown = false;
    await fns.converge("greet");
    expect(running.get("greet")?.env).toEqual({});
  });

  test("a converge with nothing changed does not touch the pool; a config with its keys reordered is the same config", async () => {
    await twoVersions();
    const { pool, activations } = recordingPool();
    const reordered: AsyncStore = {
      ...store,
      functions: {
        ...store.functions,
        get: async (name) => {
          const fn = await store.functions.get(name);
          return fn && { ...fn, config: Object.fromEntries(Object.entries(fn.config).reverse()) as typeof fn.config };
        },
      },
    };
    const fns = service(reordered, pool);
    await fns.restore();
    await fns.converge("greet");
    await fns.converge("greet");
    expect(activations.length).toBe(1);
  });
});

describe("FunctionService.patch on a node behind the cluster", () => {
  let dataDir = "";
  let sqlite: ReturnType<typeof openStore>;
  let store: AsyncStore;
  const artifacts = new Map<string, Uint8Array>();
  const sharedWithArtifacts: SharedRepo = { ...shared, getArtifact: async (d) => artifacts.get(d), putArtifact: async (d, a) => void artifacts.set(d, a) };

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), "forge-converge-"));
    sqlite = openStore(":memory:");
    store = asyncStore(sqlite);
  });
  afterEach(() => {
    sqlite.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  /** v1 here; v2 deployed on another node (in the shared store, not in this data dir), active. */
  async function deployedElsewhere(): Promise<void> {
    const config = resolveConfig("greet", {});
    await store.functions.ensure("greet", config);
    const other = mkdtempSync(join(tmpdir(), "forge-converge-other-"));
    try {
      for (const v of [1, 2]) {
        const artifact = `functions/greet/bundles/v${v}`;
        const dir = join(v === 1 ? dataDir : other, artifact);
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, "bundle.mjs"), `export default { v: ${v} }`);
        artifacts.set(`d${v}`, await packArtifact(dir));
        await store.versions.create("greet", { digest: `d${v}`, config, artifact, image: null });
        await store.versions.settle("greet", v, { status: "ready" });
      }
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
    await store.versions.activate("greet", 1);
  }

  function service(pool: PoolManager): FunctionService {
    return new FunctionService({ store, pool, logger, dataDir, urlOf: (n) => `http://${n}.localhost`, limits: { maxBytes: 1 << 20, maxFiles: 100 }, cluster: { shared: sharedWithArtifacts, announce: async () => {} } });
  }

  test("a live PATCH before the deploy's notification arrived: the converge after it still switches to the new version", async () => {
    await deployedElsewhere();
    const { pool, running } = recordingPool();
    const fns = service(pool);
    await fns.restore();
    expect(running.get("greet")?.version).toBe(1);
    await store.versions.activate("greet", 2); // the other node's deploy; its notification is late
    await fns.patch("greet", { minWarm: 1 });
    await fns.converge("greet"); // the late notification (or the periodic pass)
    expect(running.get("greet")?.version).toBe(2);
    expect(running.get("greet")?.minWarm).toBe(1);
  });

  test("a PATCH of env on a node that has not fetched the active version yet fetches it, then restarts on it", async () => {
    await deployedElsewhere();
    const { pool, running } = recordingPool();
    const fns = service(pool);
    await fns.restore();
    await store.versions.activate("greet", 2);
    await fns.patch("greet", { env: { A: "1" } });
    expect(running.get("greet")?.version).toBe(2);
    expect(running.get("greet")?.env).toEqual({ A: "1" });
    expect(existsSync(join(dataDir, "functions/greet/bundles/v2/bundle.mjs"))).toBe(true);
  });
});
