/**
 * The dashboard's page frame: the head (one stylesheet, one script, nothing from elsewhere)
 * and the nav. Pages are shells; /ui/app.js fills them from /v1 with the tab's key.
 */
import type { Child } from "hono/jsx";

export interface LayoutProps {
  title: string;
  /** Which page app.js fills (its key in app.js's PAGES). */
  page: "login" | "functions" | "function" | "databases" | "nodes";
  /** The function of a function page. */
  fn?: string;
  children?: Child;
}

export function Layout(p: LayoutProps) {
  return (
    <html lang="en" data-page={p.page} data-function={p.fn}>
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="no-referrer" />
        <title>{p.title} · forge</title>
        <link rel="icon" href="/ui/favicon.svg" type="image/svg+xml" />
        <link rel="stylesheet" href="/ui/styles.css" />
        {/* Not deferred: without a key it sends the tab to the login page before anything is drawn. */}
        <script src="/ui/app.js"></script>
      </head>
      <body>
        {p.page === "login" ? null : <Nav page={p.page} />}
        <main>{p.children}</main>
      </body>
    </html>
  );
}

function Nav(p: { page: LayoutProps["page"] }) {
  const link = (href: string, label: string, current: boolean, id?: string, hidden?: boolean) => (
    <a href={href} id={id} hidden={hidden} aria-current={current ? "page" : undefined}>
      {label}
    </a>
  );
  return (
    <header class="top">
      <a class="brand" href="/ui/">
        forge
      </a>
      <nav>
        {link("/ui/", "Functions", p.page === "functions" || p.page === "function")}
        {link("/ui/databases", "Databases", p.page === "databases")}
        {/* Shown by app.js when there is more than one node. */}
        {link("/ui/nodes", "Nodes", p.page === "nodes", "nav-nodes", p.page !== "nodes")}
      </nav>
      <button type="button" id="sign-out" class="quiet">
        Sign out
      </button>
    </header>
  );
}
