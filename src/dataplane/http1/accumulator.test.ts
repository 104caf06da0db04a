import { describe, expect, test } from "bun:test";
import { Accumulator } from "./accumulator.ts";

describe("Accumulator", () => {
  test("60 KB arriving a byte at a time costs linear copying, not quadratic", () => {
    const acc = new Accumulator();
    const n = 60 * 1024;
    let held: Buffer | undefined;
    const byte = Buffer.from("x");
    for (let i = 0; i < n; i++) held = acc.append(held, byte);
    expect(held?.length).toBe(n);
    expect(held?.toString("latin1")).toBe("x".repeat(n));
    // Concatenation would copy n²/2 = ~1.9 GB here.
    expect(acc.copied).toBeLessThanOrEqual(3 * n);
  });

  test("what was appended comes back in order across growths, and a new buffer is never written into", () => {
    const acc = new Accumulator();
    const first = Buffer.from("GET / HT");
    let held = acc.append(undefined, first);
    expect(held).toBe(first); // a single piece is not copied at all
    held = acc.append(held, Buffer.from("TP/1.1\r\n"));
    held = acc.append(held, Buffer.from("Host: a\r\n\r\n"));
    expect(held.toString()).toBe("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    expect(first.toString()).toBe("GET / HT");
    // After the bytes were taken, a rest handed back is copied, not appended to in place.
    const rest = held.subarray(10);
    acc.reset();
    const next = acc.append(rest, Buffer.from("!"));
    expect(next.toString()).toBe("/1.1\r\nHost: a\r\n\r\n!");
    expect(held.toString()).toBe("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
  });
});
