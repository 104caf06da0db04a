import { describe, expect, test } from "bun:test";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { ErrorCode, ForgeError } from "../errors.ts";
import { CONTROL_HEADER, CONTROL_HEALTH } from "./driver.ts";
import { forward, health, REQUEST_ID_HEADER, specialize, waitReady } from "./instance-client.ts";

/** A plain Bun.serve on a Unix socket standing in for an instance. */
async function fakeInstance(fetch: (request: Request) => Response | Promise<Response>) {
  const dir = await mkdtemp(join(tmpdir(), "forge-ic-"));
  const socketPath = join(dir, "s.sock");
  const server = Bun.serve({ unix: socketPath, fetch });
  return {
    endpoint: { socketPath },
    async [Symbol.asyncDispose]() {
      await server.stop(true);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function error(promise: Promise<unknown>): Promise<ForgeError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ForgeError);
  return err as ForgeError;
}

describe("forward", () => {
  test("passes method, path, query, headers (Host too) and body, plus the request id", async () => {
    await using instance = await fakeInstance(async (request) =>
      Response.json({
        method: request.method,
        url: request.url,
        headers: Object.fromEntries(request.headers),
        body: await request.text(),
      }),
    );
    const original = new Request("http://greet.localhost:8080/a/b?x=1&x=2", {
      method: "PUT",
      headers: { "x-custom": "yes", "content-type": "text/plain" },
      body: "payload",
    });
    const response = await forward(instance.endpoint, original, "rid-42");
    const seen = (await response.json()) as { method: string; url: string; headers: Record<string, string>; body: string };
    expect(seen.method).toBe("PUT");
    expect(seen.url).toBe("http://greet.localhost:8080/a/b?x=1&x=2");
    expect(seen.headers).toMatchObject({ "x-custom": "yes", host: "greet.localhost:8080", [REQUEST_ID_HEADER]: "rid-42" });
    expect(seen.body).toBe("payload");
    expect(original.headers.has(REQUEST_ID_HEADER)).toBe(false);
  });

  test("streams the request body and the response body both ways", async () => {
    let firstArrived!: () => void;
    const gotFirst = new Promise<void>((resolve) => (firstArrived = resolve));
    await using instance = await fakeInstance(async (request) => {
      const reader = request.body!.getReader();
      const first = await reader.read();
      firstArrived();
      let rest = "";
      for (let r = await reader.read(); !r.done; r = await reader.read()) rest += new TextDecoder().decode(r.value);
      return new Response(`${new TextDecoder().decode(first.value)}|${rest}`);
    });
    const encoder = new TextEncoder();
    let sent = 0;
    // The second chunk only exists once the instance has read the first: nothing was buffered whole.
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (sent === 0) controller.enqueue(encoder.encode("one"));
        else if (sent === 1) {
          await gotFirst;
          controller.enqueue(encoder.encode("two"));
        } else controller.close();
        sent++;
      },
    });
    const request = new Request("http://x/upload", { method: "POST", body, duplex: "half" } as RequestInit);
    const response = await forward(instance.endpoint, request, "r");
    expect(await response.text()).toBe("one|two");
  });

  test("neither decompresses nor follows redirects", async () => {
    const compressed = gzipSync("squeezed");
    await using instance = await fakeInstance((request) =>
      new URL(request.url).pathname === "/gz"
        ? new Response(compressed, { headers: { "content-encoding": "gzip", "content-type": "text/plain" } })
        : new Response(null, { status: 302, headers: { location: "/elsewhere" } }),
    );
    const gz = await forward(instance.endpoint, new Request("http://x/gz"), "r");
    expect(gz.headers.get("content-encoding")).toBe("gzip");
    expect(new Uint8Array(await gz.arrayBuffer())).toEqual(new Uint8Array(compressed));
    const redirect = await forward(instance.endpoint, new Request("http://x/go"), "r");
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get("location")).toBe("/elsewhere");
  });

  test("an unreachable instance is InstanceCrashed; an abort rejects with its reason", async () => {
    const dir = await mkdtemp(join(tmpdir(), "forge-ic-"));
    try {
      const gone = await error(forward({ socketPath: join(dir, "none.sock") }, new Request("http://x/"), "r"));
      expect(gone.code).toBe(ErrorCode.InstanceCrashed);
      expect(gone.status).toBe(502);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    await using instance = await fakeInstance(() => new Promise<Response>(() => {}));
    const abort = new AbortController();
    const pending = forward(instance.endpoint, new Request("http://x/"), "r", abort.signal);
    const reason = new Error("deadline");
    abort.abort(reason);
    expect(await pending.catch((e: unknown) => e)).toBe(reason);
  });
});

describe("health, waitReady and specialize", () => {
  test("health sends the control token and checks the answer is the shim's", async () => {
    await using instance = await fakeInstance((request) =>
      request.headers.get(CONTROL_HEADER) === "tok" && new URL(request.url).pathname === CONTROL_HEALTH
        ? Response.json({ ok: true, specialized: false, function: null, version: null, pid: 1 })
        : new Response("a function's answer"),
    );
    expect(await health(instance.endpoint, "tok")).toMatchObject({ ok: true, pid: 1 });
    expect((await error(health(instance.endpoint, "nope"))).code).toBe(ErrorCode.InstanceStartFailed);
  });

  test("waitReady gives up after its timeout", async () => {
    const dir = await mkdtemp(join(tmpdir(), "forge-ic-"));
    try {
      const err = await error(waitReady({ socketPath: join(dir, "never.sock") }, "t", { timeoutMs: 30 }));
      expect(err.code).toBe(ErrorCode.InstanceStartFailed);
      expect(err.message).toContain("30 ms");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("waitReady stops waiting when the instance exits", async () => {
    const dir = await mkdtemp(join(tmpdir(), "forge-ic-"));
    try {
      let exit!: () => void;
      const exited = new Promise<void>((resolve) => (exit = resolve));
      const waiting = waitReady({ socketPath: join(dir, "never.sock") }, "t", { timeoutMs: 60_000, exited });
      exit();
      const err = await error(waiting);
      expect(err.message).toContain("exited");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("waitReady answers as soon as the instance comes up", async () => {
    const dir = await mkdtemp(join(tmpdir(), "forge-ic-"));
    const socketPath = join(dir, "late.sock");
    let server: ReturnType<typeof Bun.serve> | undefined;
    try {
      const waiting = waitReady({ socketPath }, "t", { timeoutMs: 10_000 });
      server = Bun.serve({
        unix: socketPath,
        fetch: () => Response.json({ ok: true, specialized: true, function: "f", version: 1, pid: 2 }),
      });
      expect(await waiting).toMatchObject({ ok: true, pid: 2 });
    } finally {
      await server?.stop(true);
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a refused specialization is a ForgeError naming the shim's reason", async () => {
    await using instance = await fakeInstance(() =>
      Response.json({ error: { code: "specialize_failed", message: "the module failed to load: boom" } }, { status: 400 }),
    );
    const err = await error(specialize(instance.endpoint, "t", { function: "f", version: 1, code: "", env: {} }));
    expect(err.message).toContain("boom");
    expect(err.code).toBe(ErrorCode.InstanceStartFailed);
  });
});
