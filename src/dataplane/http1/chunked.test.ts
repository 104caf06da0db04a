import { describe, expect, test } from "bun:test";
import { ChunkedDecoder } from "./chunked.ts";
import { MalformedResponse } from "./response-head.ts";

/** Feeds `pieces` in turn; returns the data decoded and where the body ended in the last piece fed (-1: not ended). */
function decode(...pieces: string[]): { data: string; end: number; parts: number } {
  let data = "";
  let parts = 0;
  const d = new ChunkedDecoder((b) => {
    data += b.toString("latin1");
    parts++;
  });
  let end = -1;
  for (const p of pieces) {
    const buf = Buffer.from(p, "latin1");
    const at = d.feed(buf, 0);
    if (d.done) {
      end = at;
      break;
    }
    expect(at).toBe(buf.length);
  }
  return { data, end, parts };
}

const malformed = (...pieces: string[]): unknown => {
  try {
    decode(...pieces);
  } catch (err) {
    return err;
  }
  return undefined;
};

describe("ChunkedDecoder", () => {
  test("yields the data of each chunk and says where the body ends", () => {
    const r = decode("3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\nHTTP/1.1 200 OK");
    expect(r).toEqual({ data: "abcdefg", end: "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n".length, parts: 2 });
  });

  test("every split of a body into two pieces decodes the same", () => {
    const body = "5;ext=1\r\nhello\r\na\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n";
    for (let i = 0; i <= body.length; i++) {
      const r = decode(body.slice(0, i), body.slice(i) + "next");
      expect(r.data).toBe("hello0123456789");
      // The body ended in the piece that held its last byte.
      expect(r.end).toBe(i === body.length ? i : body.length - i);
    }
  });

  test("a body a byte at a time decodes the same, and a chunk's data is handed over as it comes", () => {
    const body = "A\r\n0123456789\r\n0\r\n\r\n";
    const r = decode(...body.split(""));
    expect([r.data, r.end, r.parts]).toEqual(["0123456789", 1, 10]);
  });

  test("sizes in upper and lower case hex, extensions and trailers are taken; trailers are dropped", () => {
    expect(decode("1a;name=\"v\"\r\n" + "x".repeat(26) + "\r\nB\r\n" + "y".repeat(11) + "\r\n0\r\nx-a: 1\r\nx-b: 2\r\n\r\n").data).toBe("x".repeat(26) + "y".repeat(11));
  });

  test("reset starts a new body", () => {
    let data = "";
    const d = new ChunkedDecoder((b) => void (data += b.toString()));
    d.feed(Buffer.from("1\r\na\r\n0\r\n\r\n"), 0);
    expect(d.done).toBe(true);
    d.reset();
    expect(d.done).toBe(false);
    d.feed(Buffer.from("1\r\nb\r\n0\r\n\r\n"), 0);
    expect([data, d.done]).toEqual(["ab", true]);
  });

  test("anything but strict framing is a MalformedResponse", () => {
    const cases = [
      "3\nabc\r\n0\r\n\r\n", // bare LF after a size
      "3\r\nabcXY0\r\n\r\n", // no CRLF after the data
      "3\r\nabc\n0\r\n\r\n", // LF alone after the data
      "3\r\nabc\r\n0\r\n\n", // bare LF ending the trailers
      "3\r\nabc\r\n0\r\nx-a: 1\n\r\n", // bare LF after a trailer
      "3\r\nabc\r\n0\r\nbad trailer\r\n\r\n", // a trailer that is no field line
      "g\r\n", // not hex
      "\r\n", // no size at all
      "-1\r\n", // a sign
      " 3\r\n", // space before the size
      "10000000000000000\r\n", // 17 digits, not read as their first 15
      "3 x\r\n", // junk after the size
      "3\rx\r\n", // a bare CR in the size line
      "1;" + "e".repeat(5000) + "\r\n", // a size line past 4096 bytes
    ];
    for (const c of cases) expect([c, malformed(c)]).toEqual([c, expect.any(MalformedResponse)]);
    // The limit holds across pieces too.
    expect(malformed("1;", "e".repeat(3000), "e".repeat(3000))).toBeInstanceOf(MalformedResponse);
    expect(malformed("0\r\n", "x-a: " + "v".repeat(4100))).toBeInstanceOf(MalformedResponse);
  });

  test("15 hex digits are the most a size may have", () => {
    // Decodes the size line; the data never comes.
    expect(decode("fffffffffffff\r\nab").data).toBe("ab");
    expect(decode("00000000000000f\r\n").data).toBe("");
  });
});
