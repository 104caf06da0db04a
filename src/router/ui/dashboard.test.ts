/**
 * The dashboard's routes in process (app.request, no sockets): page shells with a strict
 * CSP, the script and stylesheet, and the control API and data plane as they were.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createConsola } from "consola";
import { FunctionService, InvocationRecorder } from "../../functions/index.ts";
import type { PoolManager } from "../../pool/index.ts";
import { asyncStore, openStore } from "../../store/index.ts";
import { createRouter } from "../app.ts";
import { CONTENT_SECURITY_POLICY } from "./index.ts";

const logger = createConsola({ level: -999 });
const KEY = "test-key";
const PAGES = ["/ui/", "/ui/login", "/ui/functions/greet", "/ui/databases", "/ui/nodes"];

function router() {
  const sqlite = openStore(":memory:");
  const store = asyncStore(sqlite);
  /** The functions the data plane asked the pool for. */
  const asked: string[] = [];
  // The data plane asks the pool first: no pool of that name is its 404 function_not_found.
  const pool = {
    pool: (name: string) => void asked.push(name),
    snapshot: () => undefined,
    stats: () => ({ cells: 0, cellsStarting: 0, cellsByRuntime: {} }),
  } as unknown as PoolManager; // only what these routes reach
  const functions = new FunctionService({ store, pool, logger, dataDir: "/nonexistent", urlOf: (n) => `http://${n}.localhost`, limits: { maxBytes: 1, maxFiles: 1 } });
  const recorder = new InvocationRecorder({ repo: store.invocations, logger });
  const app = createRouter({ domain: "localhost", apiKey: KEY, functions, pool, recorder, logger, maxBodyBytes: 1024, maxArchiveBytes: 1024 });
  const get = (path: string, headers: Record<string, string> = {}) => app.request(`http://localhost${path}`, { headers: { host: "localhost:8080", ...headers } });
  return { get, asked, [Symbol.dispose]: () => sqlite.close() };
}

describe("dashboard routes", () => {
  test("the apex host's / sends the browser to /ui/", async () => {
    using r = router();
    const res = await r.get("/");
    expect(res.status).toBe(302);
    expect(res.headers.get("location")).toBe("/ui/");
    expect((await r.get("/ui")).headers.get("location")).toBe("/ui/");
  });

  test("every /ui answer has the CSP: the /ui redirect and a 404 too", async () => {
    using r = router();
    for (const [path, status] of [["/ui", 301], ["/ui/nope", 404], ["/ui/functions/a/b", 404]] as const) {
      const res = await r.get(path);
      expect(res.status).toBe(status);
      expect(res.headers.get("content-security-policy")).toBe(CONTENT_SECURITY_POLICY);
      expect(res.headers.get("x-content-type-options")).toBe("nosniff");
    }
  });

  test("every page is HTML with a strict CSP, one script from forge and no inline script or style", async () => {
    using r = router();
    expect(CONTENT_SECURITY_POLICY).toContain("default-src 'self'");
    expect(CONTENT_SECURITY_POLICY).toContain("script-src 'self'");
    expect(CONTENT_SECURITY_POLICY).not.toContain("unsafe-inline");
    for (const path of PAGES) {
      const res = await r.get(path);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toStartWith("text/html");
      expect(res.headers.get("content-security-policy")).toBe(CONTENT_SECURITY_POLICY);
      expect(res.headers.get("x-content-type-options")).toBe("nosniff");
      expect(res.headers.get("cache-control")).toBe("no-store");
      const html = await res.text();
      expect(html).toStartWith("<!doctype html>");
      expect(html.match(/<script\b[^>]*>/g)).toEqual([`<script src="/ui/app.js">`]);
      expect(html).toContain(`<link rel="stylesheet" href="/ui/styles.css"/>`);
      expect(html).not.toMatch(/<style\b|\sstyle=|\son[a-z]+=/i);
      expect(html).not.toMatch(/(src|href)="(https?:)?\/\//); // nothing from elsewhere
    }
  });

  test("a function page holds its name as text, escaped", async () => {
    using r = router();
    const html = await (await r.get("/ui/functions/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")).text();
    expect(html).not.toContain("<img");
    expect(html).toContain("&lt;img src=x onerror=alert(1)&gt;");
  });

  test("the script and the stylesheet are served as they are in the source, with an ETag", async () => {
    using r = router();
    const js = await r.get("/ui/app.js");
    expect(js.status).toBe(200);
    expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect(await js.text()).toBe(readFileSync(join(import.meta.dir, "app.js"), "utf8"));
    const etag = js.headers.get("etag") ?? "";
    expect(etag).toMatch(/^"\w+"$/);
    const again = await r.get("/ui/app.js", { "if-none-match": etag });
    expect(again.status).toBe(304);
    const css = await r.get("/ui/styles.css");
    expect(css.headers.get("content-type")).toBe("text/css; charset=utf-8");
    expect(await css.text()).toContain(":root");
    expect((await r.get("/ui/favicon.svg")).headers.get("content-type")).toBe("image/svg+xml");
    expect((await r.get("/ui/nope")).status).toBe(404);
  });

  test("the script inserts data as text, never as HTML", () => {
    const js = readFileSync(join(import.meta.dir, "app.js"), "utf8");
    expect(js).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function/);
  });
});

describe("the control API and the data plane are unchanged", () => {
  test("/v1 still needs the key", async () => {
    using r = router();
    expect((await r.get("/v1/functions")).status).toBe(401);
    expect((await r.get("/v1/functions", { authorization: "Bearer wrong" })).status).toBe(401);
    const ok = await r.get("/v1/functions", { authorization: `Bearer ${KEY}` });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ functions: [] });
  });

  test("a request to a function's host goes to the function, /ui and / included", async () => {
    using r = router();
    for (const path of ["/", "/ui/", "/ui/app.js", "/v1/functions"]) {
      const res = await r.get(path, { host: "greet.localhost:8080" });
      expect(res.status).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("function_not_found");
    }
    expect(r.asked).toEqual(["greet", "greet", "greet", "greet"]);
  });

  test("/fn/<name>/ui/ goes to the function too", async () => {
    using r = router();
    const res = await r.get("/fn/greet/ui/");
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("function_not_found");
    expect(r.asked).toEqual(["greet"]);
  });
});
