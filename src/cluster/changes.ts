/**
 * Change notifications between nodes (DESIGN §9): a node that changed a function (deploy,
 * rollback, PATCH, delete) or a schedule publishes one message on a Redis channel, and every
 * node converges on what the store now says. Messages carry no state, only what to look at
 * again, so a lost or repeated one does no harm: the periodic reconcile (reconciler.ts)
 * catches anything missed, and a subscriber that lost its connection asks for a full one.
 */
import type { ConsolaInstance } from "consola";
import { Redis } from "ioredis";

export type Change =
  /** A function's active version, config or existence changed. */
  | { kind: "function"; name: string; node: string }
  /** Schedules were added or removed. */
  | { kind: "schedules"; node: string };

export interface ChangeBus extends AsyncDisposable {
  /** Tells every node (this one included) to look again; resolves once Redis took it. */
  publish(change: Change): Promise<void>;
  /** Called for each change from any node. */
  onChange(listener: (change: Change) => void): void;
  /** Called when the subscription was (re)established after a loss: changes may have been missed. */
  onResync(listener: () => void): void;
  /** Resolves once subscribed. */
  ready(): Promise<void>;
}

export interface RedisChangeBusOptions {
  url: string;
  /** Channel name. Default "forge:changes". */
  channel?: string;
  logger: ConsolaInstance;
  /** Name of the subscribing connection (CLIENT LIST). Default "forge-changes". */
  connectionName?: string;
}

export function redisChangeBus(options: RedisChangeBusOptions): ChangeBus {
  const channel = options.channel ?? "forge:changes";
  const changeListeners: ((c: Change) => void)[] = [];
  const resyncListeners: (() => void)[] = [];
  // A subscribed connection can do nothing else; publishing needs its own.
  const sub = new Redis(options.url, { maxRetriesPerRequest: null, lazyConnect: true, connectionName: options.connectionName ?? "forge-changes" });
  const pub = new Redis(options.url, { maxRetriesPerRequest: 1, lazyConnect: true });
  for (const conn of [sub, pub]) conn.on("error", (err: Error) => options.logger.warn(`redis (changes): ${err.message}`));

  let subscribedOnce = false;
  // ioredis re-subscribes by itself after a reconnect; each "ready" after the first is a gap.
  sub.on("ready", () => {
    if (subscribedOnce) for (const l of resyncListeners) l();
  });
  sub.on("message", (ch: string, message: string) => {
    if (ch !== channel) return;
    const change = parseChange(message);
    if (!change) return options.logger.warn(`ignored a malformed change notification: ${message.slice(0, 200)}`);
    for (const l of changeListeners) l(change);
  });
  const subscribed = (async () => {
    await sub.connect();
    await sub.subscribe(channel);
    subscribedOnce = true;
  })();
  subscribed.catch(() => {}); // surfaced by ready()
  void pub.connect().catch(() => {}); // errors surface on publish

  return {
    async publish(change) {
      await pub.publish(channel, JSON.stringify(change));
    },
    onChange: (l) => void changeListeners.push(l),
    onResync: (l) => void resyncListeners.push(l),
    ready: () => subscribed,
    async [Symbol.asyncDispose]() {
      sub.disconnect();
      pub.disconnect();
    },
  };
}

// --- internal ---

function parseChange(message: string): Change | undefined {
  try {
    const c = JSON.parse(message) as Partial<Change> & { name?: unknown };
    if (typeof c.node !== "string") return undefined;
    if (c.kind === "function" && typeof c.name === "string") return { kind: "function", name: c.name, node: c.node };
    if (c.kind === "schedules") return { kind: "schedules", node: c.node };
  } catch {
    // falls through
  }
  return undefined;
}
