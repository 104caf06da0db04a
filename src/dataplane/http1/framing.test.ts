import { describe, expect, test } from "bun:test";
import { Framing } from "./framing.ts";
import { MalformedResponse } from "./response-head.ts";

/** Feeds `parts` in order; returns where the body ended in the last part. */
function feed(parts: string[]): { f: Framing; end: number } {
  const f = new Framing();
  f.chunked();
  let end = 0;
  for (const p of parts) end = f.feed(Buffer.from(p, "latin1"), 0);
  return { f, end };
}

describe("Framing, chunked", () => {
  test("a body whose chunk CRLF straddles two reads ends where it should", () => {
    const { f, end } = feed(["5\r\nhello\r", "\n0\r\n\r\nNEXT"]);
    expect(f.done).toBe(true);
    expect(end).toBe("\n0\r\n\r\n".length);
  });

  test("chunk data not followed by CRLF is malformed (not skipped unread)", () => {
    expect(() => feed(["5\r\nhelloXX0\r\n\r\n"])).toThrow(MalformedResponse);
    expect(() => feed(["5\r\nhello\n", "0\r\n\r\n"])).toThrow(MalformedResponse);
    expect(() => feed(["5\r\nhello\r", "X0\r\n\r\n"])).toThrow(MalformedResponse);
  });

  test("sizes past 15 hex digits and bare-LF size lines are malformed", () => {
    expect(() => feed(["10000000000000000\r\n"])).toThrow(MalformedResponse);
    expect(() => feed(["5\nhello\r\n"])).toThrow(MalformedResponse);
  });

  test("a body fed one byte at a time ends after its trailers", () => {
    const f = new Framing();
    f.chunked();
    const bytes = Buffer.from("3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", "latin1");
    for (let i = 0; i < bytes.length; i++) {
      expect(f.done).toBe(false);
      expect(f.feed(bytes.subarray(i, i + 1), 0)).toBe(1);
    }
    expect(f.done).toBe(true);
  });
});
