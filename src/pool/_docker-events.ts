/**
 * One subscription to the Docker events stream, filtered by forge's labels, so exits (and
 * OOM kills) are learned the moment the engine sees them, with no polling. When the stream
 * breaks (the engine restarted), it resubscribes from the last event seen.
 */
import type { ConsolaInstance } from "consola";
import type Dockerode from "dockerode";

export interface ContainerEvent {
  /** die, oom, ... */
  action: string;
  containerId: string;
  /** The container's labels plus the event's own attributes (exitCode on die). */
  attributes: Record<string, string>;
  timeNano: number;
}

interface RawEvent {
  Type?: string;
  Action?: string;
  status?: string;
  id?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
  timeNano?: number;
  time?: number;
}

export interface DockerEventsOptions {
  docker: Dockerode;
  /** Label filters (all must match), e.g. dev.forge.managed=true. */
  labels: string[];
  /** Event actions to receive. */
  actions: string[];
  logger: ConsolaInstance;
  onEvent(event: ContainerEvent): void;
}

export class DockerEvents {
  #stream: NodeJS.ReadableStream | undefined;
  #subscribed: Promise<void> | undefined;
  #closed = false;
  #lastNano = 0;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #seen = new Set<string>();

  constructor(private readonly options: DockerEventsOptions) {}

  /** Subscribes (once); resolves when the engine has the subscription, so no later event is missed. */
  subscribe(): Promise<void> {
    this.#subscribed ??= this.#open().catch((err: unknown) => {
      this.#subscribed = undefined;
      throw err;
    });
    return this.#subscribed;
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    const stream = this.#stream as (NodeJS.ReadableStream & { destroy?: () => void }) | undefined;
    stream?.destroy?.();
    this.#stream = undefined;
  }

  async #open(): Promise<void> {
    const filters: Record<string, string[]> = { type: ["container"], event: this.options.actions, label: this.options.labels };
    const since = this.#lastNano > 0 ? { since: (this.#lastNano / 1e9).toFixed(9) } : {};
    const stream = await this.options.docker.getEvents({ filters, ...since } as Parameters<Dockerode["getEvents"]>[0] & object);
    if (this.#closed) {
      (stream as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
      return;
    }
    this.#stream = stream;
    let pending = "";
    stream.on("data", (chunk: Buffer | string) => {
      pending += typeof chunk === "string" ? chunk : chunk.toString("utf8");
      let newline: number;
      while ((newline = pending.indexOf("\n")) !== -1) {
        this.#handle(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
      }
    });
    const reopen = (why: unknown): void => {
      if (this.#closed || this.#stream !== stream) return;
      this.#stream = undefined;
      this.options.logger.warn("the Docker events stream ended; resubscribing", why ?? "");
      const retry = (): void => {
        if (this.#closed) return;
        this.#open().catch((err: unknown) => {
          this.options.logger.warn("resubscribing to Docker events failed; retrying in 1 s", err);
          this.#retryTimer = setTimeout(retry, 1_000);
        });
      };
      retry();
    };
    stream.on("end", () => reopen(undefined));
    stream.on("error", (err: unknown) => reopen(err));
  }

  #handle(line: string): void {
    if (!line.trim()) return;
    let raw: RawEvent;
    try {
      raw = JSON.parse(line) as RawEvent;
    } catch {
      return;
    }
    const containerId = raw.Actor?.ID ?? raw.id;
    const action = raw.Action ?? raw.status;
    if (!containerId || !action) return;
    const timeNano = raw.timeNano ?? (raw.time ?? 0) * 1e9;
    // A resubscription from the last time seen may repeat that instant's events.
    const key = `${containerId}:${action}:${timeNano}`;
    if (this.#seen.has(key)) return;
    this.#seen.add(key);
    if (this.#seen.size > 1000) this.#seen.clear();
    this.#lastNano = Math.max(this.#lastNano, timeNano);
    try {
      this.options.onEvent({ action, containerId, attributes: raw.Actor?.Attributes ?? {}, timeNano });
    } catch (err) {
      this.options.logger.warn("a Docker event handler threw", err);
    }
  }
}
