/**
 * Turning an instance's stdout/stderr into LogLines: split the byte stream into lines and
 * take the shim's `[req:<id>] ` prefix off into `requestId`. Shared by the process and
 * docker drivers.
 */
import type { LogLine } from "./driver.ts";

const REQUEST_PREFIX = /^\[req:([^\]\s]{1,200})\] /;

/** Splits the shim's request prefix off one line of output. */
export function parseLogLine(line: string): { requestId?: string; text: string } {
  if (!line.startsWith("[req:")) return { text: line };
  const match = REQUEST_PREFIX.exec(line);
  if (!match?.[1]) return { text: line };
  return { requestId: match[1], text: line.slice(match[0].length) };
}

/** Longest line kept whole; a longer run without a newline is cut so memory stays bounded. */
export const MAX_LINE_CHARS = 16 * 1024;

/**
 * Yields the lines of a byte stream (without their `\n` / `\r\n`), the last one even when
 * it lacks a newline. Lines longer than MAX_LINE_CHARS are cut into pieces.
 */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    let start = 0;
    let newline: number;
    while ((newline = pending.indexOf("\n", start)) !== -1) {
      yield trimCr(pending.slice(start, newline));
      start = newline + 1;
    }
    pending = pending.slice(start);
    while (pending.length > MAX_LINE_CHARS) {
      yield pending.slice(0, MAX_LINE_CHARS);
      pending = pending.slice(MAX_LINE_CHARS);
    }
  }
  pending += decoder.decode();
  if (pending.length > 0) yield trimCr(pending);
}

function trimCr(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

/** A bounded buffer of the most recent lines of one instance. */
export class LogRing {
  readonly #lines: (LogLine | undefined)[];
  #next = 0;
  #size = 0;

  constructor(readonly capacity: number) {
    this.#lines = new Array<LogLine | undefined>(capacity);
  }

  push(line: LogLine): void {
    this.#lines[this.#next] = line;
    this.#next = (this.#next + 1) % this.capacity;
    if (this.#size < this.capacity) this.#size++;
  }

  /** The buffered lines, oldest first. */
  snapshot(): LogLine[] {
    const out: LogLine[] = [];
    const first = (this.#next - this.#size + this.capacity) % this.capacity;
    for (let i = 0; i < this.#size; i++) {
      const line = this.#lines[(first + i) % this.capacity];
      if (line) out.push(line);
    }
    return out;
  }
}

/**
 * One instance's log: a ring of past lines plus live subscribers, so `logs({follow})` can
 * yield what was buffered and then what comes, until the instance ends or the caller aborts.
 */
export class InstanceLog {
  readonly #ring: LogRing;
  readonly #subscribers = new Set<(line: LogLine | null) => void>();
  #ended = false;

  constructor(capacity: number) {
    this.#ring = new LogRing(capacity);
  }

  /** The buffered lines, oldest first. */
  lines(): LogLine[] {
    return this.#ring.snapshot();
  }

  get ended(): boolean {
    return this.#ended;
  }

  push(line: LogLine): void {
    this.#ring.push(line);
    for (const subscriber of this.#subscribers) subscriber(line);
  }

  /** No more lines will come (the instance is gone and its streams are drained). */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const subscriber of this.#subscribers) subscriber(null);
    this.#subscribers.clear();
  }

  async *read(options: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<LogLine> {
    const { follow = false, signal } = options;
    if (!follow || this.#ended || signal?.aborted) {
      yield* this.#ring.snapshot();
      return;
    }
    // Subscribe before taking the snapshot so no line falls between the two.
    const queue: (LogLine | null)[] = [];
    let wake: (() => void) | undefined;
    const subscriber = (line: LogLine | null) => {
      queue.push(line);
      wake?.();
    };
    const onAbort = () => wake?.();
    this.#subscribers.add(subscriber);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      yield* this.#ring.snapshot();
      while (!signal?.aborted) {
        const next = queue.shift();
        if (next === null) return;
        if (next) {
          yield next;
          continue;
        }
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      this.#subscribers.delete(subscriber);
      signal?.removeEventListener("abort", onAbort);
    }
  }
}

/**
 * Did the instance die of V8's heap limit (node's "FATAL ERROR: ... JavaScript heap out of
 * memory", then an abort)? Its last lines say so; such an exit is reported as "oom", as the
 * kernel's kill over memoryMb is.
 */
export function heapExhausted(log: InstanceLog): boolean {
  return log
    .lines()
    // Node prints the line, then a native stack trace of some 10-30 frames.
    .slice(-100)
    .some((line) => line.text.includes("JavaScript heap out of memory"));
}

/**
 * The lines that say why an instance failed to start, for the error of its start: from the
 * shim's own `forge: ...` line (a module that failed to load, with its first frames) when it
 * is among the last lines, else the last five lines.
 */
export function startFailureTail(log: InstanceLog): string {
  const lines = log.lines().slice(-20);
  const own = lines.findLastIndex((line) => line.text.startsWith("forge: "));
  const from = own >= 0 ? lines.slice(own, own + 10) : lines.slice(-5);
  return from.map((line) => line.text).join("\n");
}
