/**
 * The hybrid histogram keep-alive: windows computed by hand for a regular, a bursty and a
 * rare function, and the fallback to the fixed TTL when the histogram is not representative.
 * Bins are one minute (60 000 ms), the range 240 bins, margins 10%.
 */
import { describe, expect, test } from "bun:test";
import { fixedKeepAlive, histogramKeepAlive } from "./keep-alive.ts";

const MIN = 60_000;
const FALLBACK = 10 * MIN;

function policy() {
  return histogramKeepAlive({ fallbackMs: FALLBACK, binMs: MIN });
}

describe("histogram keep-alive", () => {
  test("a regular function (every 5 minutes): unloaded after a request, back at 4.5 min, kept until 6.6 min", () => {
    const p = policy();
    // 20 idle times of 5 min 0.5 s: all in bin 5.
    for (let i = 0; i < 20; i++) p.observeIdle("timer", 5 * MIN + 500);
    // p5 = bin 5 -> 5 min less 10% = 270 000 ms; p99 = bin 5 -> its upper edge, 6 min, plus 10% = 396 000 ms.
    expect(p.windows("timer")).toEqual({ prewarmMs: 270_000, keepAliveMs: 396_000, source: "histogram" });
    // cv of 20 in one of 240 bins: sqrt(239) = 15.46.
    expect(p.describe("timer")).toMatchObject({ policy: "histogram", samples: 20, cv: 15.46 });
  });

  test("a bursty function (90 gaps of 2 s, 10 of 30 min): kept, never unloaded, until 34.1 min", () => {
    const p = policy();
    for (let i = 0; i < 90; i++) p.observeIdle("bursty", 2_000);
    for (let i = 0; i < 10; i++) p.observeIdle("bursty", 30 * MIN);
    // p5 (rank 5) in bin 0: no pre-warm window; p99 (rank 99) in bin 30: (30 + 1) min + 10% = 2 046 000 ms.
    expect(p.windows("bursty")).toEqual({ prewarmMs: 0, keepAliveMs: 2_046_000, source: "histogram" });
    expect(p.describe("bursty").cv).toBe(13.99);
  });

  test("a rare function (3 idle times of 2 h): too few to trust, the fixed TTL applies", () => {
    const p = policy();
    for (let i = 0; i < 3; i++) p.observeIdle("rare", 120 * MIN);
    expect(p.windows("rare")).toEqual({ prewarmMs: 0, keepAliveMs: FALLBACK, source: "fixed" });
    expect(p.describe("rare").fallback).toBe("3 idle times seen, 10 needed");
    // A function never seen: the fixed TTL too.
    expect(p.windows("never")).toEqual({ prewarmMs: 0, keepAliveMs: FALLBACK, source: "fixed" });
  });

  test("idle times spread evenly over the range are not representative (cv < 2)", () => {
    const p = policy();
    for (let bin = 0; bin < 240; bin++) p.observeIdle("flat", bin * MIN + 1);
    expect(p.windows("flat").source).toBe("fixed");
    expect(p.describe("flat")).toMatchObject({ cv: 0, fallback: "idle times spread evenly (cv 0 < 2)" });
  });

  test("idle times past the four hours of the range fall back to the fixed TTL", () => {
    const p = policy();
    for (let i = 0; i < 20; i++) p.observeIdle("nightly", 5 * 60 * MIN);
    expect(p.windows("nightly")).toEqual({ prewarmMs: 0, keepAliveMs: FALLBACK, source: "fixed" });
    expect(p.describe("nightly").fallback).toMatch(/longer than the histogram's range/);
  });

  test("windows follow new idle times, and a deleted function's history goes", () => {
    const p = policy();
    for (let i = 0; i < 10; i++) p.observeIdle("f", 2 * MIN);
    expect(p.windows("f")).toEqual({ prewarmMs: 108_000, keepAliveMs: 198_000, source: "histogram" });
    // Ten more at 20 min: p5 stays in bin 2, p99 moves to bin 20 -> 21 min + 10%.
    for (let i = 0; i < 10; i++) p.observeIdle("f", 20 * MIN);
    expect(p.windows("f")).toEqual({ prewarmMs: 108_000, keepAliveMs: 1_386_000, source: "histogram" });
    p.forget("f");
    expect(p.windows("f").source).toBe("fixed");
  });

  test("time compressed: one-second bins scale every window the same way", () => {
    const p = histogramKeepAlive({ fallbackMs: 10_000, binMs: 1_000 });
    for (let i = 0; i < 20; i++) p.observeIdle("timer", 5_000 + 10);
    expect(p.windows("timer")).toEqual({ prewarmMs: 4_500, keepAliveMs: 6_600, source: "histogram" });
  });

  test("fixed keeps every function its TTL", () => {
    const p = fixedKeepAlive(FALLBACK);
    p.observeIdle("f", 1);
    expect(p.windows("f")).toEqual({ prewarmMs: 0, keepAliveMs: FALLBACK, source: "fixed" });
    expect(p.describe("f").policy).toBe("fixed");
  });
});
