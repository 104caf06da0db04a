import { describe, expect, test } from "bun:test";
import { demux, frameHeader, logLines, type Frame } from "./_docker-logs.ts";
import type { LogLine } from "./driver.ts";

const enc = new TextEncoder();

function frame(stream: "stdout" | "stderr", text: string): Uint8Array {
  const payload = enc.encode(text);
  const out = new Uint8Array(8 + payload.length);
  out.set(frameHeader(stream, payload.length), 0);
  out.set(payload, 8);
  return out;
}

/** The bytes cut into chunks of `size` (frames split across chunk boundaries). */
async function* chunks(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.slice(i, i + size);
}

async function collect<T>(source: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of source) out.push(item);
  return out;
}

const joined = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

describe("docker log demultiplexing", () => {
  test("frames come out whole and in order, whatever the chunking", async () => {
    const bytes = joined(frame("stdout", "one\n"), frame("stderr", "two\n"), frame("stdout", "x".repeat(1000) + "\n"));
    for (const size of [1, 3, 8, 9, 64, 5000]) {
      const frames = await collect(demux(chunks(bytes, size)));
      expect(frames.map((f: Frame) => [f.stream, new TextDecoder().decode(f.payload)])).toEqual([
        ["stdout", "one\n"],
        ["stderr", "two\n"],
        ["stdout", "x".repeat(1000) + "\n"],
      ]);
    }
  });

  test("stdin frames and a truncated last frame are dropped", async () => {
    const stdin = joined(new Uint8Array([0, 0, 0, 0, 0, 0, 0, 2]), enc.encode("in"));
    const bytes = joined(stdin, frame("stdout", "kept\n"), frame("stdout", "cut off").slice(0, 10));
    const frames = await collect(demux(chunks(bytes, 4)));
    expect(frames.map((f) => new TextDecoder().decode(f.payload))).toEqual(["kept\n"]);
  });

  test("lines carry the timestamp, the stream and the request id of the shim's prefix", async () => {
    const bytes = joined(
      frame("stdout", "2026-11-23T10:00:00.123456789Z [req:abc-1] hello\n"),
      frame("stderr", "2026-11-23T10:00:01Z plain\r\n"),
      frame("stdout", "2026-11-23T10:00:02Z a\nb\n"),
    );
    const lines = await collect(logLines(demux(chunks(bytes, 7)), "inst1", true));
    expect(lines).toEqual([
      { ts: Date.parse("2026-11-23T10:00:00.123Z"), instance: "inst1", stream: "stdout", text: "hello", requestId: "abc-1" },
      { ts: Date.parse("2026-11-23T10:00:01Z"), instance: "inst1", stream: "stderr", text: "plain" },
      { ts: Date.parse("2026-11-23T10:00:02Z"), instance: "inst1", stream: "stdout", text: "a" },
      { ts: Date.parse("2026-11-23T10:00:02Z"), instance: "inst1", stream: "stdout", text: "b" },
    ] satisfies LogLine[]);
  });
});
