/** Change notifications over a real Redis: every subscriber hears every change, a reconnect asks for a resync. */
import { describe, expect, test } from "bun:test";
import { createConsola } from "consola";
import { Redis } from "ioredis";
import { requireServices } from "../../test/_services.ts";
import { until } from "../../test/_helpers.ts";
import { redisChangeBus, type Change } from "./changes.ts";

const redisUrl = requireServices("redisUrl")?.redisUrl;
const logger = createConsola({ level: -999 });

describe.skipIf(!redisUrl)("redisChangeBus", () => {
  test("a change published by one node reaches every node, itself included; malformed messages are dropped", async () => {
    const channel = `forge-test:changes:${crypto.randomUUID()}`;
    await using a = redisChangeBus({ url: redisUrl as string, channel, logger });
    await using b = redisChangeBus({ url: redisUrl as string, channel, logger });
    await Promise.all([a.ready(), b.ready()]);
    const heardA: Change[] = [];
    const heardB: Change[] = [];
    a.onChange((c) => heardA.push(c));
    b.onChange((c) => heardB.push(c));
    const raw = new Redis(redisUrl as string);
    try {
      await raw.publish(channel, "{not json");
      await raw.publish(channel, JSON.stringify({ kind: "function", node: "x" })); // no name
    } finally {
      raw.disconnect();
    }
    await a.publish({ kind: "function", name: "greet", node: "a" });
    await b.publish({ kind: "schedules", node: "b" });
    await until(() => heardA.length === 2 && heardB.length === 2, 5000, "both changes on both nodes");
    expect(heardA).toEqual([{ kind: "function", name: "greet", node: "a" }, { kind: "schedules", node: "b" }]);
    expect(heardB).toEqual(heardA);
  });

  test("after its connection is cut, a subscriber resubscribes and asks for a resync", async () => {
    const channel = `forge-test:changes:${crypto.randomUUID()}`;
    const connectionName = `forge-test-${crypto.randomUUID().slice(0, 8)}`;
    await using a = redisChangeBus({ url: redisUrl as string, channel, logger, connectionName });
    await a.ready();
    let resyncs = 0;
    const heard: Change[] = [];
    a.onResync(() => resyncs++);
    a.onChange((c) => heard.push(c));
    const admin = new Redis(redisUrl as string);
    try {
      // The server cuts this bus's subscribing connection (no other test's).
      const clients = String(await admin.call("CLIENT", "LIST", "TYPE", "pubsub"));
      const ids = clients
        .split("\n")
        .filter((line) => line.includes(` name=${connectionName} `))
        .map((line) => /\bid=(\d+)/.exec(line)?.[1]);
      expect(ids.length).toBe(1);
      for (const id of ids) if (id) await admin.client("KILL", "ID", id);
      await until(() => resyncs >= 1, 10_000, "a resync after the reconnect");
      await until(async () => {
        await admin.publish(channel, JSON.stringify({ kind: "function", name: "after", node: "z" }));
        return heard.some((c) => c.kind === "function" && c.name === "after");
      }, 10_000, "a change heard after the reconnect");
    } finally {
      admin.disconnect();
    }
  });
});
