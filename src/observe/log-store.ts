/**
 * Function logs: every line an instance writes, kept per function in size-capped files in
 * the data dir (current.log rotated to previous.log, so a function never holds more than
 * its retention), written in batches off the request path, and streamed live to followers.
 */
import { appendFileSync, existsSync, mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import type { LogLine } from "../pool/index.ts";

export interface FunctionLogLine extends LogLine {
  function: string;
  version: number;
}

export interface LogQuery {
  /** Only lines at or after this epoch ms. */
  since?: number;
  /** Only lines of this request. */
  requestId?: string;
  /** At most this many of the newest lines. Default 1000. */
  limit?: number;
}

export interface LogStoreOptions {
  dir: string;
  logger: ConsolaInstance;
  /** Bytes kept per function (both files together). */
  retentionBytes: number;
  /** Flush batches this often, ms. Default 100. */
  flushEveryMs?: number;
}

export class LogStore implements AsyncDisposable {
  private readonly pending = new Map<string, string[]>();
  private readonly sizes = new Map<string, number>();
  private readonly followers = new Map<string, Set<(line: FunctionLogLine) => void>>();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly flushEveryMs: number;

  constructor(private readonly o: LogStoreOptions) {
    this.flushEveryMs = o.flushEveryMs ?? 100;
    mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  }

  /** Takes one line (from the driver's onLog); cheap: a push and maybe a timer. */
  add(line: FunctionLogLine): void {
    let batch = this.pending.get(line.function);
    if (!batch) this.pending.set(line.function, (batch = []));
    batch.push(JSON.stringify(line));
    const subs = this.followers.get(line.function);
    if (subs) for (const s of subs) s(line);
    if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), this.flushEveryMs);
      this.timer.unref?.();
    }
  }

  /** Writes pending batches; rotates a function's file past half its retention. */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    for (const [fn, lines] of this.pending) {
      if (lines.length === 0) continue;
      this.pending.set(fn, []);
      try {
        this.write(fn, lines.join("\n") + "\n");
      } catch (err) {
        this.o.logger.warn(`could not write logs of ${fn}:`, err);
      }
    }
  }

  /** Stored lines of a function, oldest first, filtered. */
  async read(fn: string, query: LogQuery = {}): Promise<FunctionLogLine[]> {
    this.flush();
    const dir = join(this.o.dir, fn);
    const out: FunctionLogLine[] = [];
    for (const file of ["previous.log", "current.log"]) {
      const path = join(dir, file);
      if (!existsSync(path)) continue;
      const text = await Bun.file(path).text();
      for (const raw of text.split("\n")) {
        if (!raw) continue;
        let line: FunctionLogLine;
        try {
          line = JSON.parse(raw) as FunctionLogLine;
        } catch {
          continue; // a line cut by a crash mid-write
        }
        if (query.since !== undefined && line.ts < query.since) continue;
        if (query.requestId !== undefined && line.requestId !== query.requestId) continue;
        out.push(line);
      }
    }
    const limit = query.limit ?? 1000;
    return out.length > limit ? out.slice(out.length - limit) : out;
  }

  /** Calls `listener` with each new line of a function until the returned function is called. */
  follow(fn: string, listener: (line: FunctionLogLine) => void): () => void {
    let subs = this.followers.get(fn);
    if (!subs) this.followers.set(fn, (subs = new Set()));
    subs.add(listener);
    return () => {
      subs.delete(listener);
      if (subs.size === 0) this.followers.delete(fn);
    };
  }

  remove(fn: string): void {
    this.pending.delete(fn);
    this.sizes.delete(fn);
    rmSync(join(this.o.dir, fn), { recursive: true, force: true });
  }

  /** Bytes currently stored for a function. */
  bytes(fn: string): number {
    const dir = join(this.o.dir, fn);
    let n = 0;
    for (const f of ["previous.log", "current.log"]) {
      try {
        n += statSync(join(dir, f)).size;
      } catch {
        // missing file
      }
    }
    return n;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.flush();
  }

  // --- internal ---

  private write(fn: string, text: string): void {
    const dir = join(this.o.dir, fn);
    const current = join(dir, "current.log");
    let size = this.sizes.get(fn);
    if (size === undefined) {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      size = existsSync(current) ? statSync(current).size : 0;
    }
    const half = Math.max(1024, Math.floor(this.o.retentionBytes / 2));
    let chunk = text;
    // A single batch larger than the file cap keeps only its newest part.
    if (chunk.length > half) chunk = chunk.slice(chunk.length - half).replace(/^[^\n]*\n/, "");
    if (size + chunk.length > half) {
      renameSync(current, join(dir, "previous.log"));
      size = 0;
    }
    appendFileSync(current, chunk, { mode: 0o600 });
    this.sizes.set(fn, size + Buffer.byteLength(chunk));
  }
}
