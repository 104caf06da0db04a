/**
 * Docker's log stream of a container without a TTY is multiplexed: frames of an 8-byte
 * header (stream type: 1 stdout, 2 stderr; three zero bytes; payload size, big-endian
 * uint32) and the payload. With `timestamps`, every message starts with an RFC 3339 time
 * and a space. This module turns such a stream into LogLines.
 */
import type { LogLine } from "./driver.ts";
import { MAX_LINE_CHARS, parseLogLine } from "./_log-parse.ts";

export interface Frame {
  stream: "stdout" | "stderr";
  payload: Uint8Array;
}

const HEADER = 8;

/** Splits a multiplexed stream into its frames, whatever the chunking. Unknown stream types (stdin) are skipped. */
export async function* demux(source: AsyncIterable<Uint8Array | string>): AsyncGenerator<Frame> {
  let buffer: Uint8Array = new Uint8Array(0);
  for await (const raw of source) {
    const chunk = typeof raw === "string" ? new TextEncoder().encode(raw) : raw;
    buffer = buffer.length === 0 ? chunk : concat(buffer, chunk);
    let offset = 0;
    while (buffer.length - offset >= HEADER) {
      const type = buffer[offset];
      const size =
        ((buffer[offset + 4] ?? 0) << 24) | ((buffer[offset + 5] ?? 0) << 16) | ((buffer[offset + 6] ?? 0) << 8) | (buffer[offset + 7] ?? 0);
      const length = size >>> 0;
      if (buffer.length - offset < HEADER + length) break;
      const payload = buffer.subarray(offset + HEADER, offset + HEADER + length);
      offset += HEADER + length;
      if (type === 1 || type === 2) yield { stream: type === 1 ? "stdout" : "stderr", payload };
    }
    buffer = offset === buffer.length ? new Uint8Array(0) : buffer.slice(offset);
  }
}

/** The header of one frame (tests, and anyone writing a multiplexed stream). */
export function frameHeader(stream: "stdout" | "stderr", size: number): Uint8Array {
  const header = new Uint8Array(HEADER);
  header[0] = stream === "stdout" ? 1 : 2;
  new DataView(header.buffer).setUint32(4, size, false);
  return header;
}

const TIMESTAMP = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)) /;

/**
 * The LogLines of a demultiplexed stream of one instance: each frame is one message of the
 * container's output (json-file logs one line a message; a line over 16 KiB comes in
 * pieces), so a frame's text is split on newlines and each piece keeps its stream.
 */
export async function* logLines(frames: AsyncIterable<Frame>, instance: string, timestamps: boolean): AsyncGenerator<LogLine> {
  const decoder = new TextDecoder();
  for await (const frame of frames) {
    let text = decoder.decode(frame.payload);
    let ts = Date.now();
    if (timestamps) {
      const match = TIMESTAMP.exec(text);
      if (match?.[1]) {
        const parsed = Date.parse(match[1]);
        if (!Number.isNaN(parsed)) ts = parsed;
        text = text.slice(match[0].length);
      }
    }
    if (text.endsWith("\n")) text = text.slice(0, -1);
    for (let raw of text.split("\n")) {
      if (raw.endsWith("\r")) raw = raw.slice(0, -1);
      for (let start = 0; start < Math.max(raw.length, 1); start += MAX_LINE_CHARS) {
        const piece = raw.slice(start, start + MAX_LINE_CHARS);
        const { requestId, text: line } = parseLogLine(piece);
        yield { ts, instance, stream: frame.stream, text: line, ...(requestId ? { requestId } : {}) };
      }
    }
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
