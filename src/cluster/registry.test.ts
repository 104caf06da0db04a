/** The node list's rules, over a shared repo in memory and a hand-moved clock. */
import { expect, test } from "bun:test";
import { createConsola } from "consola";
import type { NodeRecord, SharedRepo } from "../store/index.ts";
import { NodeRegistry } from "./registry.ts";

const logger = createConsola({ level: -999 });

function memoryShared(): SharedRepo & { rows: Map<string, NodeRecord>; down: boolean } {
  const rows = new Map<string, NodeRecord>();
  const self = {
    rows,
    down: false,
    putArtifact: async () => {},
    getArtifact: async () => undefined,
    hasArtifact: async () => false,
    pruneArtifacts: async () => 0,
    setting: async (_k: string, v: string) => v,
    async heartbeat(n: NodeRecord) {
      if (self.down) throw new Error("connection refused");
      rows.set(n.id, n);
    },
    nodes: async (since: number) => [...rows.values()].filter((n) => n.heartbeatAt >= since),
    removeNode: async (id: string) => void rows.delete(id),
  };
  return self;
}

test("a node is listed while its heartbeat is fresh, drops out when it stops, and leaves at once on a clean stop", async () => {
  let now = 1_000_000;
  const shared = memoryShared();
  const make = (id: string) => new NodeRegistry({ shared, logger, self: { id, url: `http://${id}`, driver: "process", version: "t" }, heartbeatMs: 1000, now: () => now });
  const a = make("a");
  const b = make("b");
  await a.start();
  await b.start();
  try {
    expect((await a.list()).map((n) => n.id)).toEqual(["a", "b"]);
    expect((await a.peers()).map((n) => n.id)).toEqual(["b"]);
    // b is killed: its row stays, its heartbeat ages past five beats
    now += 4_000;
    shared.rows.set("a", { ...(shared.rows.get("a") as NodeRecord), heartbeatAt: now });
    expect((await a.list()).map((n) => n.id)).toEqual(["a", "b"]);
    now += 2_000;
    shared.rows.set("a", { ...(shared.rows.get("a") as NodeRecord), heartbeatAt: now });
    expect((await a.list()).map((n) => n.id)).toEqual(["a"]);
    expect(await b.peers()).toEqual([{ id: "a", url: "http://a", driver: "process", version: "t", startedAt: 1_000_000, heartbeatAt: now }]);
  } finally {
    await a[Symbol.asyncDispose]();
    await b[Symbol.asyncDispose]();
  }
  expect(shared.rows.size).toBe(0);
});

test("a node silent for a day is deleted from the list by the next node that lists it", async () => {
  const now = 10 * 24 * 3600_000;
  const shared = memoryShared();
  shared.rows.set("ghost", { id: "ghost", url: "http://ghost", driver: "docker", version: "t", startedAt: 0, heartbeatAt: now - 24 * 3600_000 - 1 });
  shared.rows.set("recent", { id: "recent", url: "http://recent", driver: "docker", version: "t", startedAt: 0, heartbeatAt: now - 60_000 });
  const r = new NodeRegistry({ shared, logger, self: { id: "me", url: "http://me", driver: "process", version: "t" }, now: () => now });
  await r.start();
  try {
    expect((await r.list()).map((n) => n.id)).toEqual(["me"]);
    expect([...shared.rows.keys()].sort()).toEqual(["me", "recent"]);
  } finally {
    await r[Symbol.asyncDispose]();
  }
});

test("a node that cannot reach the database fails to start with the cause", async () => {
  const shared = memoryShared();
  shared.down = true;
  const r = new NodeRegistry({ shared, logger, self: { id: "x", url: "http://x", driver: "process", version: "t" } });
  await expect(r.start()).rejects.toThrow("connection refused");
  await r[Symbol.asyncDispose]();
});
