/**
 * Bad input against a real server: each gets a 4xx JSON error with a hint, the server keeps
 * serving, and nothing is written outside the data dir.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { pack as tarPack, type Header as TarHeaders } from "tar-stream";
import { packFiles } from "../src/build/index.ts";
import { startForge, type ForgeProcess } from "./_helpers.ts";

let forge: ForgeProcess;
const marker = `forge-evil-${process.pid}-${Date.now()}`;

beforeAll(async () => {
  forge = await startForge({ env: { FORGE_MAX_ARCHIVE_MB: "1" } });
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
});

async function tarGz(entries: { header: Partial<TarHeaders> & { name: string }; body?: string }[]): Promise<Uint8Array> {
  const p = tarPack();
  const chunks: Uint8Array[] = [];
  const done = new Promise<void>((resolve, reject) => {
    p.on("data", (c) => void chunks.push(c as Uint8Array));
    p.on("end", () => resolve());
    p.on("error", reject);
  });
  for (const e of entries) p.entry(e.header, e.body ?? "");
  p.finalize();
  await done;
  return gzipSync(Buffer.concat(chunks));
}

async function deploy(name: string, body: Uint8Array | string, headers: Record<string, string> = {}): Promise<Response> {
  return forge.api(`/v1/functions/${name}/deploy`, { method: "POST", body, headers: { "content-type": "application/gzip", ...headers } });
}

async function expectError(res: Response, status: number, code?: string): Promise<void> {
  expect(res.status).toBe(status);
  expect(res.headers.get("content-type")).toContain("application/json");
  const body = (await res.json()) as { error: { code: string; message: string; hint?: string } };
  expect(body.error.message).toBeTruthy();
  expect(body.error.hint).toBeTruthy();
  if (code) expect(body.error.code).toBe(code);
}

describe("hostile archives", () => {
  test("an entry with ../ is refused and written nowhere", async () => {
    const a = await tarGz([{ header: { name: "index.ts", type: "file" }, body: "export default () => new Response('x')" }, { header: { name: `../../../../tmp/${marker}-dotdot`, type: "file" }, body: "evil" }]);
    await expectError(await deploy("evil", a), 400, "invalid_archive");
    expect(existsSync(`/tmp/${marker}-dotdot`)).toBe(false);
  });

  test("an absolute path is refused", async () => {
    const a = await tarGz([{ header: { name: `/tmp/${marker}-abs`, type: "file" }, body: "evil" }]);
    await expectError(await deploy("evil", a), 400, "invalid_archive");
    expect(existsSync(`/tmp/${marker}-abs`)).toBe(false);
  });

  test("a symlink to / followed by a file through it is refused", async () => {
    const a = await tarGz([
      { header: { name: "root", type: "symlink", linkname: "/" } },
      { header: { name: `root/tmp/${marker}-link`, type: "file" }, body: "evil" },
    ]);
    await expectError(await deploy("evil", a), 400, "invalid_archive");
    expect(existsSync(`/tmp/${marker}-link`)).toBe(false);
  });

  test("a body that is not gzip is refused", async () => {
    await expectError(await deploy("evil", "this is not a gzip archive"), 400, "invalid_archive");
  });

  test("an archive over the size limit is refused", async () => {
    // 3 MB of zeros compresses to a few KB: the unpacked size is what counts.
    const a = await packFiles([{ path: "big.bin", data: new Uint8Array(3 * 1024 * 1024) }, { path: "index.ts", data: "export default () => new Response('x')" }]);
    await expectError(await deploy("big", a), 413, "archive_too_large");
  });

  test("a wrong content type gets 415 with a hint", async () => {
    await expectError(await deploy("evil", "{}", { "content-type": "application/json" }), 415);
  });

  test("malformed forge.json in the archive is a 400 naming forge.json", async () => {
    const a = await packFiles([{ path: "index.ts", data: "export default () => new Response('x')" }, { path: "forge.json", data: "{ not json" }]);
    const res = await deploy("badjson", a);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toContain("forge.json");
  });

  test("a forge.json field of the wrong type is a 400 naming the field", async () => {
    const a = await packFiles([{ path: "index.ts", data: "export default () => new Response('x')" }, { path: "forge.json", data: '{"concurrency": "lots"}' }]);
    const res = await deploy("badfield", a);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toContain("concurrency");
  });

  test("code that does not build is a 400 with the build error", async () => {
    const a = await packFiles([{ path: "index.ts", data: "export default {{{ syntax" }]);
    await expectError(await deploy("nobuild", a), 400, "build_failed");
  });
});

describe("names, auth and routing", () => {
  test("a name that is not a DNS label is a 400", async () => {
    const a = await packFiles([{ path: "index.ts", data: "export default () => new Response('x')" }]);
    await expectError(await deploy("Bad_Name", a), 400, "invalid_name");
    await expectError(await deploy("a".repeat(64), a), 400, "invalid_name");
  });

  test("an unknown function is a 404 on the data plane and the API", async () => {
    await expectError(await forge.fn("nosuch"), 404, "function_not_found");
    await expectError(await forge.api("/v1/functions/nosuch"), 404, "function_not_found");
    await expectError(await fetch(`${forge.url}/fn/nosuch/x`), 404, "function_not_found");
  });

  test("no key or a wrong key is a 401", async () => {
    await expectError(await fetch(`${forge.url}/v1/functions`), 401, "unauthorized");
    await expectError(await forge.api("/v1/functions", { headers: { authorization: "Bearer wrong" } }), 401, "unauthorized");
  });

  test("malformed JSON bodies are a 400", async () => {
    const ok = await packFiles([{ path: "index.ts", data: "export default () => new Response('fine')" }]);
    expect((await deploy("fine", ok)).status).toBe(201);
    await expectError(await forge.api("/v1/functions/fine", { method: "PATCH", body: "{oops", headers: { "content-type": "application/json" } }), 400, "invalid_json");
    await expectError(await forge.api("/v1/functions/fine", { method: "PATCH", body: '{"name":"other"}' }), 400, "invalid_config");
    await expectError(await forge.api("/v1/functions/fine/rollback", { method: "POST", body: '{"version":"x"}' }), 400);
  });

  test("after all of that the server still serves", async () => {
    expect((await fetch(`${forge.url}/healthz`)).status).toBe(200);
    const r = await forge.fn("fine");
    expect(await r.text()).toBe("fine");
  });

  test("nothing was written outside the data dir", () => {
    for (const suffix of ["dotdot", "abs", "link"]) expect(existsSync(join("/tmp", `${marker}-${suffix}`))).toBe(false);
  });
});
