/**
 * The dashboard in a real browser (headless Chromium through playwright-core) against a real
 * forge (process driver): sign in, a function's figures, invoke, roll back, live logs, a
 * wrong key; every request the pages make goes to forge (all others are blocked and counted),
 * and each page is photographed to test/output/dashboard/<page>.png.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { ROOT, cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireChromium, requireServices } from "./_services.ts";

const CHROMIUM = requireChromium();
/** Databases are provisioned on the test Postgres (the shared backend: no container per database). */
const PG = CHROMIUM ? requireServices("pgUrl") : undefined;
const OUT = join(ROOT, "test/output/dashboard");
const NAME = "greet";

/** A fetch module that logs each request's tag and answers with its version and the body it got. */
function writeFunction(dir: string, version: number): void {
  writeFileSync(join(dir, "forge.json"), JSON.stringify({ name: NAME, entry: "index.ts" }));
  writeFileSync(
    join(dir, "index.ts"),
    `export default {
  async fetch(request: Request): Promise<Response> {
    const tag = new URL(request.url).searchParams.get("tag") ?? "-";
    console.log("hit " + tag);
    const got = request.method === "POST" ? await request.text() : "";
    return Response.json({ version: ${version}, got });
  },
};
`,
  );
}

describe.skipIf(!CHROMIUM)("the dashboard in a browser", () => {
  let forge: ForgeProcess;
  let browser: Browser;
  let fnDir: string & Disposable;

  beforeAll(async () => {
    mkdirSync(OUT, { recursive: true });
    forge = await startForge({ env: PG ? { FORGE_PROVISION_BACKEND: "shared", FORGE_PG_ADMIN_URL: PG.pgUrl } : {} });
    fnDir = tempDir("forge-dashboard-fn-");
    for (const version of [1, 2]) {
      writeFunction(fnDir, version);
      const deployed = await cli(forge, ["deploy", fnDir, "--name", NAME]);
      if (deployed.code !== 0) throw new Error(`deploy failed:\n${deployed.stdout}\n${deployed.stderr}`);
    }
    for (let i = 0; i < 5; i++) expect((await forge.fn(NAME, "/?tag=warmup")).status).toBe(200);
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await forge?.[Symbol.asyncDispose]();
    fnDir?.[Symbol.dispose]();
  });

  /**
   * A fresh tab (its own sessionStorage) whose requests to anything but forge are aborted and
   * kept in `blocked`; `problems` gathers uncaught errors and CSP violations.
   */
  async function tab(): Promise<{ page: Page; blocked: string[]; problems: string[] } & AsyncDisposable> {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const origin = new URL(forge.url).origin;
    const blocked: string[] = [];
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (new URL(url).origin === origin) return route.continue();
      blocked.push(url);
      return route.abort("blockedbyclient");
    });
    const page = await context.newPage();
    const problems: string[] = [];
    page.on("pageerror", (err) => problems.push(`uncaught: ${err.message}`));
    page.on("console", (m) => {
      if (m.type() === "error" && /Content.Security.Policy/i.test(m.text())) problems.push(m.text());
    });
    return { page, blocked, problems, [Symbol.asyncDispose]: () => context.close() };
  }

  async function signIn(page: Page, key = forge.apiKey): Promise<void> {
    await page.goto(`${forge.url}/ui/login`);
    await page.fill("#key", key);
    await page.click("#login-form button[type=submit]");
  }

  const text = async (page: Page, selector: string): Promise<string> => ((await page.locator(selector).first().textContent()) ?? "").trim();
  const shot = (page: Page, name: string) => page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });

  test("a page without a key sends the browser to the login; with it the function shows with its figures", async () => {
    await using t = await tab();
    const { page } = t;
    await page.goto(forge.url); // the apex's / redirects to /ui/, which has no key yet
    await page.waitForURL(/\/ui\/login\?next=%2Fui%2F$/);
    await shot(page, "login");
    await page.fill("#key", forge.apiKey);
    await page.click("#login-form button[type=submit]");
    await page.waitForURL(`${forge.url}/ui/`);

    const row = `#functions tr[data-function="${NAME}"]`;
    await page.locator(`${row} svg.spark polyline`).waitFor();
    expect(await text(page, `${row} td.version`)).toBe("v2");
    expect(Number(await text(page, `${row} td.requests`))).toBeGreaterThanOrEqual(5);
    expect(Number(await text(page, `${row} td.instances`))).toBeGreaterThanOrEqual(1);
    expect(await text(page, `${row} td.p50`)).toMatch(/^[\d.]+ m?s$/);
    expect(await text(page, `${row} td.p99`)).toMatch(/^[\d.]+ m?s$/);
    expect(await text(page, `${row} td.errors`)).toBe("0%");
    expect(await text(page, `${row} td.cold`)).toMatch(/^[\d.]+%$/);
    // One node: the nav does not offer the nodes page.
    expect(await page.locator("#nav-nodes").isHidden()).toBe(true);
    expect(await page.evaluate(() => sessionStorage.getItem("forge.apiKey"))).toBe(forge.apiKey);
    await shot(page, "functions");
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });

  test("a function's page invokes it from the form and shows the answer", async () => {
    await using t = await tab();
    const { page } = t;
    await signIn(page);
    await page.waitForURL(`${forge.url}/ui/`);
    await page.click(`#functions tr[data-function="${NAME}"] a`);
    await page.waitForURL(`${forge.url}/ui/functions/${NAME}`);
    await page.locator("#instances tbody tr td.origin").first().waitFor();
    expect(["warm", "cell", "cold"]).toContain(await text(page, "#instances tbody tr td.origin"));
    expect(await text(page, '#config dd[data-key="concurrency"]')).toMatch(/^\d+$/);

    await page.fill("#invoke-body", JSON.stringify({ hello: "dashboard" }));
    await page.click("#invoke-form button[type=submit]");
    await page.locator("#invoke-answer").waitFor({ state: "visible" });
    expect(await text(page, "#invoke-status")).toStartWith("200");
    expect(JSON.parse(await text(page, "#invoke-answer"))).toEqual({ version: 2, got: JSON.stringify({ hello: "dashboard" }) });
    await page.locator("#invocations tbody tr").first().waitFor();
    await shot(page, "function");
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });

  test("a log line written while the page follows the logs appears on it", async () => {
    await using t = await tab();
    const { page } = t;
    await signIn(page, forge.apiKey);
    await page.waitForURL(`${forge.url}/ui/`);
    await page.goto(`${forge.url}/ui/functions/${NAME}`);
    await until(async () => (await text(page, "#logs-status")) === "following", 10_000, "the page following the logs");
    const tag = `live-${Date.now().toString(36)}`;
    expect(await page.locator("#logs li", { hasText: tag }).count()).toBe(0);
    await until(
      async () => {
        expect((await forge.fn(NAME, `/?tag=${tag}`)).status).toBe(200);
        return page
          .locator("#logs li", { hasText: `hit ${tag}` })
          .first()
          .waitFor({ timeout: 1000 })
          .then(() => true, () => false);
      },
      15_000,
      "the log line on the page",
    );
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });

  test("rolling back from the versions table changes the active version", async () => {
    await using t = await tab();
    const { page } = t;
    await signIn(page);
    await page.waitForURL(`${forge.url}/ui/`);
    await page.goto(`${forge.url}/ui/functions/${NAME}`);
    await page.locator('#versions tr[data-version="2"].active').waitFor();
    expect(await page.locator('#versions tr[data-version="2"] button.rollback').count()).toBe(0);
    await page.click('#versions tr[data-version="1"] button.rollback');
    await page.locator('#versions tr[data-version="1"].active').waitFor();
    await until(async () => (await text(page, "#fn-version")) === "v1", 10_000, "the header showing v1");
    const api = (await (await forge.api(`/v1/functions/${NAME}`)).json()) as { version: number };
    expect(api.version).toBe(1);
    expect(await (await forge.fn(NAME, "/?tag=after-rollback")).json()).toEqual({ version: 1, got: "" });
    // The newer version is offered back.
    expect(await text(page, '#versions tr[data-version="2"] button.rollback')).toBe("Roll forward to v2");
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });

  test("the databases and nodes pages list what /v1 says", async () => {
    await using t = await tab();
    const { page } = t;
    await signIn(page);
    await page.waitForURL(`${forge.url}/ui/`);
    await page.click('nav a[href="/ui/databases"]');
    await page.waitForURL(`${forge.url}/ui/databases`);
    await until(async () => (await text(page, "#databases-status")) !== "loading…", 10_000, "the databases listed");
    expect(await text(page, "#databases-status")).toBe("no databases yet");

    // A name /v1 refuses: its message is shown.
    await page.fill("#service-name", "Not A Name");
    await page.click("#provision-form button[type=submit]");
    await page.locator("#provision-error").waitFor({ state: "visible" });
    expect(await text(page, "#provision-error")).toContain("service_name");

    if (PG) {
      const service = `dash-${Date.now().toString(36)}`;
      await page.fill("#service-name", service);
      await page.click("#provision-form button[type=submit]");
      const row = `#databases tr[data-service="${service}"]`;
      await page.locator(`${row}[data-status="ready"]`).waitFor({ timeout: 30_000 });
      expect(await text(page, `${row} td .url`)).toStartWith("postgres://");
      expect(await page.locator("#provision-error").isHidden()).toBe(true);
      await shot(page, "databases");
      // Deleted from its row, after a confirmation; nothing is left on the shared server.
      page.once("dialog", (d) => void d.accept());
      await page.click(`${row} button.delete`);
      await page.locator(`${row}[data-status="deleted"]`).waitFor({ timeout: 30_000 });
    } else {
      await shot(page, "databases");
    }

    await page.goto(`${forge.url}/ui/nodes`);
    await page.locator("#nodes tbody tr").first().waitFor();
    expect(await page.locator("#nodes tbody tr").count()).toBe(1);
    expect(await text(page, "#nodes tbody tr td")).toContain("(this node)");
    await shot(page, "nodes");
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });

  test("the nav offers the nodes page when /v1/nodes lists more than one", async () => {
    await using t = await tab();
    const { page } = t;
    await signIn(page);
    await page.waitForURL(`${forge.url}/ui/`);
    const self = ((await (await forge.api("/v1/nodes")).json()) as { nodes: { id: string }[] }).nodes[0];
    const other = { ...self, id: "node-b", url: "http://10.0.0.2:8080", self: false };
    // As a cluster's node would answer; the page's own request, answered in the browser.
    await page.route(`${forge.url}/v1/nodes`, (route) => route.fulfill({ json: { nodes: [self, other] } }));
    await page.reload();
    await page.locator("#nav-nodes").waitFor({ state: "visible" });
    await page.click("#nav-nodes");
    await page.waitForURL(`${forge.url}/ui/nodes`);
    await page.locator('#nodes tr[data-node="node-b"]').waitFor();
    expect(await page.locator("#nodes tbody tr").count()).toBe(2);
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });

  test("a wrong key shows an error and keeps the login", async () => {
    await using t = await tab();
    const { page } = t;
    await signIn(page, "not-the-key");
    await page.locator("#login-error").waitFor({ state: "visible" });
    expect(await text(page, "#login-error")).toBe("That key is not this forge's API key.");
    expect(page.url()).toBe(`${forge.url}/ui/login`);
    expect(await page.evaluate(() => sessionStorage.getItem("forge.apiKey"))).toBeNull();
    await shot(page, "login-error");
    expect(t.blocked).toEqual([]);
    expect(t.problems).toEqual([]);
  });
});
