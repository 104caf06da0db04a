/**
 * The node list (DESIGN §9): each node refreshes its row in Postgres every heartbeat; a node
 * whose heartbeat is older than `staleMs` has dropped out of every listing (it was killed, or
 * cannot reach the database), and one gone for a day is deleted by whichever node notices.
 */
import type { ConsolaInstance } from "consola";
import type { NodeRecord, SharedRepo } from "../store/index.ts";

export interface NodeRegistryOptions {
  shared: SharedRepo;
  self: Omit<NodeRecord, "heartbeatAt" | "startedAt">;
  logger: ConsolaInstance;
  /** Heartbeat period, ms. Default 1000. */
  heartbeatMs?: number;
  /** A node whose heartbeat is older than this is not listed, ms. Default 5 heartbeats. */
  staleMs?: number;
  now?: () => number;
}

/** Nodes long silent are deleted, not just left out. */
const FORGET_AFTER_MS = 24 * 60 * 60_000;

export class NodeRegistry implements AsyncDisposable {
  private readonly startedAt: number;
  private readonly heartbeatMs: number;
  private readonly staleMs: number;
  private readonly now: () => number;
  private timer: ReturnType<typeof setInterval> | undefined;
  private beating: Promise<void> | undefined;
  private failing = false;

  constructor(private readonly o: NodeRegistryOptions) {
    this.now = o.now ?? Date.now;
    this.startedAt = this.now();
    this.heartbeatMs = o.heartbeatMs ?? 1000;
    this.staleMs = o.staleMs ?? 5 * this.heartbeatMs;
  }

  get id(): string {
    return this.o.self.id;
  }

  /** Registers this node (rejects when the database does not answer), then beats in the background. */
  async start(): Promise<void> {
    await this.beat();
    this.timer = setInterval(() => void (this.beating ??= this.beatQuietly().finally(() => (this.beating = undefined))), this.heartbeatMs);
    this.timer.unref?.();
  }

  /** The nodes alive now (this one included, while its heartbeat holds); those silent for a day are deleted. */
  async list(): Promise<NodeRecord[]> {
    const now = this.now();
    const nodes = await this.o.shared.nodes(0);
    for (const gone of nodes.filter((n) => n.heartbeatAt < now - FORGET_AFTER_MS)) {
      await this.o.shared.removeNode(gone.id).catch(() => {}); // another node may have removed it first
    }
    return nodes.filter((n) => n.heartbeatAt >= now - this.staleMs);
  }

  /** The other nodes alive now. */
  async peers(): Promise<NodeRecord[]> {
    return (await this.list()).filter((n) => n.id !== this.o.self.id);
  }

  /** Stops beating and leaves the list at once (a clean stop; a killed node ages out instead). */
  async [Symbol.asyncDispose](): Promise<void> {
    clearInterval(this.timer);
    await this.beating;
    await this.o.shared.removeNode(this.o.self.id).catch((err: unknown) => this.o.logger.warn(`could not remove node ${this.o.self.id} from the node list:`, err));
  }

  // --- internal ---

  private async beat(): Promise<void> {
    await this.o.shared.heartbeat({ ...this.o.self, startedAt: this.startedAt, heartbeatAt: this.now() });
  }

  private async beatQuietly(): Promise<void> {
    try {
      await this.beat();
      if (this.failing) this.o.logger.info(`node ${this.o.self.id}: heartbeat restored`);
      this.failing = false;
    } catch (err) {
      // One warning per outage: the other nodes stop listing this one until it is back.
      if (!this.failing) this.o.logger.warn(`node ${this.o.self.id}: heartbeat failed (${err instanceof Error ? err.message : String(err)}); retrying every ${this.heartbeatMs} ms`);
      this.failing = true;
    }
  }
}
