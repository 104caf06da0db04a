/**
 * Hostile clients at scale, against a forge process: odd requests sent while a steady load
 * runs on the same function fail none of it and stop no instance; ten thousand idle and
 * trickling connections from one address leave other clients served, stay within a memory
 * bound, and are closed within the configured times.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

let forge: ForgeProcess;
const dir = tempDir("forge-hostile-");

/** Idle keep-alive and head limits of the forge under test, short so that the test sees them pass. */
const IDLE_MS = 4000;
const HEAD_MS = 3000;
/** RSS of forge with 10,000 open connections must stay under this (README: "Limits"). */
const RSS_BOUND_MB = 256;

beforeAll(async () => {
  forge = await startForge({
    env: { FORGE_IDLE_TIMEOUT: `${IDLE_MS}ms`, FORGE_HEAD_TIMEOUT: `${HEAD_MS}ms`, FORGE_MAX_CONNECTIONS: "12000", FORGE_MAX_CONNECTIONS_PER_CLIENT: "12000" },
  });
  writeFileSync(
    join(dir, "index.ts"),
    `export default { async fetch(req: Request) {
       const path = new URL(req.url).pathname;
       if (path === "/hold") await Bun.sleep(6000);
       if (req.body) await req.arrayBuffer();
       return new Response("ok " + path);
     } };`,
  );
  expect((await cli(forge, ["deploy", dir, "--name", "steady"])).code).toBe(0);
  expect((await cli(forge, ["deploy", dir, "--name", "narrow", "--concurrency", "1", "--max-instances", "1"])).code).toBe(0);
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

const instanceIds = async (): Promise<string[]> =>
  ((await (await forge.api("/v1/functions/steady")).json()) as { pool: { instances: { id: string }[] } }).pool.instances.map((i) => i.id).sort();

/** Sends `bytes` on a fresh connection; resolves with what came back once the server closes or `ms` pass. */
async function oneShot(bytes: string, ms = 3000): Promise<string> {
  let got = "";
  const done = Promise.withResolvers<void>();
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port: forge.port,
    socket: { data: (_s, d) => void (got += d.toString("latin1")), close: () => done.resolve(), error: () => done.resolve() },
  });
  socket.write(Buffer.from(bytes, "latin1"));
  const timer = setTimeout(() => done.resolve(), ms);
  await done.promise;
  clearTimeout(timer);
  socket.end();
  return got;
}

/** Keep-alive GETs on `connections` connections, one at a time on each, until `stop` resolves; counts the answers. */
async function steadyLoad(connections: number, stop: Promise<void>): Promise<{ ok: number; failed: string[] }> {
  const host = `steady.localhost:${forge.port}`;
  let running = true;
  void stop.then(() => (running = false));
  const failed: string[] = [];
  let ok = 0;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (running) {
        try {
          const res = await fetch(`http://127.0.0.1:${forge.port}/load`, { headers: { host } });
          const text = await res.text();
          if (res.status === 200 && text === "ok /load") ok++;
          else failed.push(`${res.status} ${text.slice(0, 80)}`);
        } catch (err) {
          failed.push(String(err));
        }
      }
    }),
  );
  return { ok, failed };
}

describe("odd requests beside a steady load", () => {
  test("20 odd requests a second fail none of the steady requests and stop no instance", async () => {
    const host = `steady.localhost:${forge.port}`;
    await fetch(`http://127.0.0.1:${forge.port}/warm`, { headers: { host } });
    const before = await instanceIds();
    const odd = [
      `FOO / HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      `get / HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      `BREW / HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      `CONNECT ${host} HTTP/1.1\r\nHost: ${host}\r\n\r\n`,
      `POST /fn/steady/ HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello`,
      `POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello`,
      `POST / HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: ${host}\r\nX-Bad: a\x00b\r\n\r\n`,
      `GET / HTTP/1.1\nHost: ${host}\n\n`,
      `GET / HTTP/1.1\r\nHost: ${host}\r\n folded\r\n\r\n`,
      `GET / HTTP/1.1\r\nHost: ${host}\r\nHost: other.localhost\r\n\r\n`,
      `GET /fn/steady/ HTTP/1.1\r\nHost: 127.0.0.1:${forge.port}\r\nX-Big: ${"a".repeat(16_300)}\r\n\r\n`,
    ];
    const stop = Promise.withResolvers<void>();
    const load = steadyLoad(8, stop.promise);
    const answers: string[] = [];
    // 20 a second for 5 s: 100 odd requests, each on its own connection.
    for (let i = 0; i < 100; i++) {
      void oneShot(odd[i % odd.length] ?? "").then((a) => answers.push(a.slice(0, 12)));
      await Bun.sleep(50); // the pace is the behaviour under test
    }
    await until(() => answers.length === 100, 10_000, "the odd requests' answers");
    stop.resolve();
    const { ok, failed } = await load;
    expect(failed).toEqual([]);
    expect(ok).toBeGreaterThan(100);
    // Each odd request got a clear answer: a 4xx or 5xx status line, never a bare close.
    expect(answers.filter((a) => !/^HTTP\/1\.1 [45]\d\d$/.test(a))).toEqual([]);
    // None stopped (the load may have started more).
    const after = await instanceIds();
    expect(before.filter((id) => !after.includes(id))).toEqual([]);
  });
});

const rssMb = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${forge.pid}/status`, "utf8"))?.[1] ?? NaN) / 1024;

describe("memory stays bounded", () => {
  test("200 clients pipelining 1 MB of requests each without reading, and 300 bodies of 1 MB, all queued for one busy slot", async () => {
    const base = rssMb();
    const host = `steady.localhost:${forge.port}`;
    const narrow = `narrow.localhost:${forge.port}`;
    const sockets: Socket[] = [];
    try {
      // One slot, held: every request below waits for it, its bytes coming meanwhile.
      void fetch(`http://127.0.0.1:${forge.port}/hold`, { headers: { host: narrow } });
      await until(async () => {
        const r = (await (await forge.api("/v1/functions/narrow")).json()) as { pool: { inFlight: number } };
        return r.pool.inFlight > 0 || undefined;
      }, 10_000, "the slot held");
      const pipelined = Buffer.from(`GET /p HTTP/1.1\r\nHost: ${narrow}\r\n\r\n`.repeat(Math.ceil(1_000_000 / 40)), "latin1");
      for (let i = 0; i < 200; i += 100) {
        const batch = await Promise.all(
          Array.from({ length: 100 }, () => Bun.connect({ hostname: "127.0.0.1", port: forge.port, socket: { data() {}, drain() {} } })),
        );
        for (const s of batch) {
          s.pause(); // reads nothing
          s.write(pipelined);
        }
        sockets.push(...batch);
      }
      const body = Buffer.alloc(1_000_000, 97);
      for (let i = 0; i < 300; i++) {
        const s = await Bun.connect({ hostname: "127.0.0.1", port: forge.port, socket: { data() {}, drain() {} } });
        s.write(Buffer.concat([Buffer.from(`POST /q HTTP/1.1\r\nHost: ${narrow}\r\nContent-Length: ${body.length}\r\n\r\n`, "latin1"), body]));
        sockets.push(s);
      }
      // What forge buffers: one head plus 64 KiB of input, 64 KiB of a waiting body, one answer, per connection.
      await until(async () => {
        const r = (await (await forge.api("/v1/functions/narrow")).json()) as { pool: { queued: number } };
        return r.pool.queued >= 450 || undefined;
      }, 20_000, "the queued requests");
      const grown = rssMb() - base;
      console.log(`forge RSS grew ${grown.toFixed(0)} MB for 200 unread pipelines and 300 queued 1 MB bodies`);
      expect(grown).toBeLessThan(256);
      const res = await fetch(`http://127.0.0.1:${forge.port}/other`, { headers: { host } });
      expect(await res.text()).toBe("ok /other");
    } finally {
      for (const s of sockets) s.terminate();
    }
  }, 60_000);
});

describe("ten thousand connections from one address", () => {
  test("idle and trickling connections: others are served, RSS stays bounded, all are closed in time", async () => {
    const host = `steady.localhost:${forge.port}`;
    const sockets: Socket<{ closedAt: number }>[] = [];
    const opened = Date.now();
    const open = async (): Promise<Socket<{ closedAt: number }>> =>
      Bun.connect<{ closedAt: number }>({
        hostname: "127.0.0.1",
        port: forge.port,
        data: { closedAt: 0 },
        socket: {
          data() {},
          close(s) {
            s.data.closedAt = Date.now();
          },
          error(s) {
            s.data.closedAt ||= Date.now();
          },
        },
      });
    for (let i = 0; i < 10_000; i += 500) sockets.push(...(await Promise.all(Array.from({ length: 500 }, open))));
    const allOpen = Date.now();
    // Half trickle a head that never ends (a byte every 500 ms), half stay silent.
    const trickling = sockets.slice(0, 5000);
    for (const s of trickling) s.write(`GET / HTTP/1.1\r\nHost: ${host}\r\nX-`);
    const trickle = setInterval(() => {
      for (const s of trickling) if (!s.data.closedAt) s.write("a");
    }, 500);
    try {
      // Another client is served meanwhile.
      const res = await fetch(`http://127.0.0.1:${forge.port}/other`, { headers: { host } });
      expect(await res.text()).toBe("ok /other");
      const rss = rssMb();
      console.log(`forge RSS with 10,000 connections open: ${rss.toFixed(0)} MB (opened in ${allOpen - opened} ms)`);
      expect(rss).toBeLessThan(RSS_BOUND_MB);
      await until(() => sockets.every((s) => s.data.closedAt > 0) || undefined, IDLE_MS + HEAD_MS + 20_000, "every connection closed");
    } finally {
      clearInterval(trickle);
      for (const s of sockets) s.end();
    }
    // Trickling heads close at the head timeout, idle ones at the idle timeout (each counted
    // from when the last socket opened, on the gateway's coarse 50 ms clock, plus load).
    const lastTrickler = Math.max(...trickling.map((s) => s.data.closedAt));
    const firstIdle = Math.min(...sockets.slice(5000).map((s) => s.data.closedAt));
    expect(lastTrickler - allOpen).toBeLessThan(HEAD_MS + 10_000);
    expect(firstIdle - opened).toBeGreaterThanOrEqual(IDLE_MS - 100);
    const after = await fetch(`http://127.0.0.1:${forge.port}/after`, { headers: { host } });
    expect(await after.text()).toBe("ok /after");
  }, 90_000);
});
