/**
 * The web dashboard on the apex host: `/` sends the browser to `/ui/`, and `/ui/...` serves
 * page shells, one script and one stylesheet. It holds no data and no key of its own: the
 * browser signs in with the API key, keeps it in the tab's sessionStorage and does every
 * read and action through /v1 with `Authorization: Bearer`, like any other client.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Context, Hono } from "hono";
import type { JSX } from "hono/jsx/jsx-runtime";
import { DatabasesPage, FunctionPage, FunctionsPage, LoginPage, NodesPage } from "./pages.tsx";

/**
 * Scripts and styles from this origin only, none inline: data the pages show is inserted
 * as text (app.js never sets innerHTML), and were some to slip through, it could not run.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const FAVICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#c2410c"/><path d="M5 4h6v2H7v2h3v2H7v2H5z" fill="#fff"/></svg>`;

/** A file the pages load, with its ETag. */
interface Asset {
  body: Uint8Array<ArrayBuffer>;
  type: string;
  etag: string;
}

// Read once at start: plain files, no build step (they are what the browser gets).
const ASSETS: Record<string, Asset> = {
  "/ui/app.js": assetOf(readFileSync(join(import.meta.dir, "app.js")), "text/javascript; charset=utf-8"),
  "/ui/styles.css": assetOf(readFileSync(join(import.meta.dir, "styles.css")), "text/css; charset=utf-8"),
  "/ui/favicon.svg": assetOf(new TextEncoder().encode(FAVICON_SVG), "image/svg+xml"),
};

/** Mounts `/` and `/ui/...` on the router (the apex host: a function's subdomain never gets here). */
export function mountDashboard(app: Hono): void {
  // On every /ui answer: pages, files, 404s and the /ui redirect ("/ui/*" alone does not match "/ui").
  for (const path of ["/ui", "/ui/*"]) {
    app.use(path, async (c, next) => {
      await next();
      c.header("content-security-policy", CONTENT_SECURITY_POLICY);
      c.header("x-content-type-options", "nosniff");
      c.header("referrer-policy", "no-referrer");
    });
  }

  app.get("/", (c) => c.redirect("/ui/", 302));
  app.get("/ui", (c) => c.redirect("/ui/", 301));

  app.get("/ui/", (c) => page(c, <FunctionsPage />));
  app.get("/ui/login", (c) => page(c, <LoginPage />));
  app.get("/ui/functions/:name{[^/]+}", (c) => page(c, <FunctionPage name={c.req.param("name")} />));
  app.get("/ui/databases", (c) => page(c, <DatabasesPage />));
  app.get("/ui/nodes", (c) => page(c, <NodesPage />));

  for (const [path, a] of Object.entries(ASSETS)) app.get(path, (c) => asset(c, a));
}

// --- internal ---

async function page(c: Context, body: JSX.Element): Promise<Response> {
  c.header("cache-control", "no-store");
  return c.html("<!doctype html>" + (await body).toString());
}

function assetOf(body: Uint8Array, type: string): Asset {
  return { body: new Uint8Array(body), type, etag: `"${Bun.hash(body).toString(36)}"` };
}

function asset(c: Context, a: Asset): Response {
  // Revalidated each time (a 304 while unchanged): a new forge's script is never mixed with an old page.
  const headers = { etag: a.etag, "cache-control": "no-cache" };
  if (c.req.header("if-none-match") === a.etag) return c.body(null, 304, headers);
  return c.body(a.body, 200, { ...headers, "content-type": a.type });
}
