// forge dashboard: fills the server's page shells from /v1 with the key this tab holds.
// Plain JS, no build step. Data goes into the page as text (textContent, createTextNode),
// never as HTML; the page's Content-Security-Policy allows no inline script either.
"use strict";

const KEY = "forge.apiKey";
const PAGE = document.documentElement.dataset.page;

// Every page but the login needs a key: without one, go there before anything is drawn.
const SIGNED_IN = PAGE === "login" || sessionStorage.getItem(KEY) !== null;
if (!SIGNED_IN) toLogin();

document.addEventListener("DOMContentLoaded", () => {
  const run = PAGES[PAGE];
  if (!run || !SIGNED_IN) return;
  if (PAGE !== "login") {
    byId("sign-out")?.addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.assign("/ui/login");
    });
    void showNodesLink();
  }
  void run();
});

const PAGES = {
  login: loginPage,
  functions: functionsPage,
  function: functionPage,
  databases: databasesPage,
  nodes: nodesPage,
};

// --- the API ---

class ApiError extends Error {
  constructor(status, message, hint) {
    super(message);
    this.status = status;
    this.hint = hint;
  }
}

/** A /v1 request with the tab's key; a 401 ends the session (the key is wrong or was changed). */
async function api(path, init = {}, key = sessionStorage.getItem(KEY)) {
  const headers = new Headers(init.headers);
  headers.set("authorization", "Bearer " + key);
  const res = await fetch("/v1" + path, { ...init, headers });
  if (res.status === 401 && PAGE !== "login") {
    sessionStorage.removeItem(KEY);
    toLogin();
  }
  return res;
}

/** The JSON of a /v1 answer, or an ApiError with forge's message and hint. */
async function getJson(path, init) {
  const res = await api(path, init);
  return jsonOf(res);
}

async function jsonOf(res) {
  const body = await res.json().catch(() => null);
  if (!res.ok) {
    const e = body && body.error;
    throw new ApiError(res.status, (e && e.message) || res.status + " " + res.statusText, e && e.hint);
  }
  return body;
}

function fnPath(name, rest = "") {
  return "/functions/" + encodeURIComponent(name) + rest;
}

function toLogin() {
  const next = location.pathname + location.search;
  location.replace("/ui/login" + (next.startsWith("/ui/") && next !== "/ui/login" ? "?next=" + encodeURIComponent(next) : ""));
}

// --- DOM helpers: text only ---

function byId(id) {
  return document.getElementById(id);
}

/** An element with attributes (class, data-*, others as attributes) and children (strings become text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** Replaces a table's rows; its status line says "none" when there are none. */
function fillTable(id, rows, empty = "none") {
  byId(id).tBodies[0].replaceChildren(...rows);
  setText(id + "-status", rows.length ? "" : empty, "status muted");
}

function tableError(id, err) {
  setText(id + "-status", errorText(err), "status error");
}

function setText(id, text, className) {
  const el = byId(id);
  if (!el) return;
  el.textContent = text;
  if (className !== undefined) el.className = className;
}

function errorText(err) {
  if (err instanceof ApiError) return err.message + (err.hint ? " (" + err.hint + ")" : "");
  return "request failed: " + (err && err.message ? err.message : String(err));
}

// --- formats ---

function ms(v) {
  if (v === null || v === undefined) return "–";
  if (v >= 10_000) return (v / 1000).toFixed(1) + " s";
  return (v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
}

function pct(r) {
  if (r === null || r === undefined) return "–";
  const p = r * 100;
  return (p > 0 && p < 10 ? p.toFixed(1) : Math.round(p)) + "%";
}

function time(ts) {
  if (ts === null || ts === undefined) return "–";
  const d = new Date(ts);
  return Date.now() - d.getTime() < 86_400_000 ? d.toLocaleTimeString() : d.toLocaleString();
}

function age(msAgo) {
  if (msAgo === null || msAgo === undefined) return "–";
  const s = Math.round(msAgo / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function statusClass(status) {
  if (status === null || status === undefined) return "bad";
  return status >= 500 || status === 429 ? "bad" : status >= 400 ? "warn" : "ok";
}

// --- polling ---

const timers = [];
addEventListener("pagehide", () => timers.forEach(clearTimeout));
// Back to a page kept in the back-forward cache: its timers and log stream were stopped; start afresh.
addEventListener("pageshow", (ev) => {
  if (ev.persisted) location.reload();
});

/** Runs `fn` now and then every `ms` after it finished, skipping while the tab is hidden. */
function every(ms, fn) {
  const tick = async () => {
    if (!document.hidden) await fn().catch(() => {});
    timers.push(setTimeout(tick, ms));
  };
  return tick();
}

async function showNodesLink() {
  try {
    const { nodes } = await getJson("/nodes");
    if (nodes.length > 1) byId("nav-nodes").hidden = false;
  } catch {
    // the nav works without it
  }
}

// --- login ---

async function loginPage() {
  const form = byId("login-form");
  const input = byId("key");
  const error = byId("login-error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    error.hidden = true;
    form.querySelector("button").disabled = true;
    try {
      // Any /v1 route answers 401 to a wrong key; this one is cheap.
      const res = await api("/nodes", {}, key);
      await jsonOf(res);
      sessionStorage.setItem(KEY, key);
      const next = new URLSearchParams(location.search).get("next");
      location.assign(next && next.startsWith("/ui/") ? next : "/ui/"); // this forge's pages only
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401 ? "That key is not this forge's API key." : errorText(err);
      error.hidden = false;
      form.querySelector("button").disabled = false;
      input.select();
    }
  });
}

// --- functions ---

async function functionsPage() {
  const select = byId("window");
  let last = [];
  const render = () => fillTable("functions", last.map((f) => functionRow(f, select.value)), "no functions yet: deploy one with `forge deploy`");
  select.addEventListener("change", render);
  await every(5000, async () => {
    try {
      const { functions } = await getJson("/functions");
      last = await Promise.all(
        functions.map(async (f) => {
          const [detail, inv] = await Promise.all([
            getJson(fnPath(f.name)).catch(() => null),
            getJson(fnPath(f.name, "/invocations?limit=100")).catch(() => null),
          ]);
          return { ...f, detail, invocations: inv ? inv.invocations : [] };
        }),
      );
      render();
    } catch (err) {
      tableError("functions", err);
    }
  });
}

function functionRow(f, win) {
  const s = (f.detail && f.detail.stats && f.detail.stats[win]) || null;
  const instances = f.detail && f.detail.pool ? f.detail.pool.instances.length : 0;
  const num = (cls, v) => h("td", { class: "num " + cls }, v);
  return h(
    "tr",
    { "data-function": f.name },
    h("td", {}, h("a", { href: "/ui/functions/" + encodeURIComponent(f.name) }, f.name)),
    num("version", f.version === null ? "–" : "v" + f.version),
    num("instances", instances),
    num("requests", s ? s.count : "–"),
    num("p50", ms(s && s.p50Ms)),
    num("p99", ms(s && s.p99Ms)),
    h("td", { class: "num errors " + (s && s.errorRate > 0 ? "bad" : "") }, pct(s && s.errorRate)),
    num("cold", pct(s && s.coldStartRate)),
    h("td", { class: "chart" }, sparkline(f.invocations)),
  );
}

/** Durations of the last invocations, oldest left, as a line; the tooltip gives the range. */
function sparkline(invocations) {
  const values = invocations
    .filter((r) => r.kind !== "async" && typeof r.durationMs === "number")
    .map((r) => r.durationMs)
    .reverse();
  const W = 160;
  const H = 28;
  const el = svg("svg", { class: "spark", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img" });
  el.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5 }));
  if (values.length === 0) return el;
  const max = Math.max(...values, 1);
  const step = values.length > 1 ? W / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(H - 2 - (v / max) * (H - 4)).toFixed(1)}`);
  if (values.length === 1) points.push(`${W},${points[0].split(",")[1]}`);
  el.append(svg("polyline", { points: points.join(" ") }));
  const title = svg("title", {});
  title.textContent = `${values.length} requests, ${ms(Math.min(...values))} to ${ms(Math.max(...values))}`;
  el.prepend(title);
  el.setAttribute("aria-label", title.textContent);
  return el;
}

// --- one function ---

async function functionPage() {
  const name = document.documentElement.dataset.function;
  const reload = {
    detail: () => loadDetail(name),
    versions: () => loadVersions(name, reload),
    invocations: () => loadInvocations(name),
    schedules: () => loadSchedules(name),
    deadLetters: () => loadDeadLetters(name),
  };
  setupInvoke(name, reload);
  void followLogs(name);
  void every(5000, () => Promise.all([reload.detail(), reload.invocations()]));
  void every(15000, () => Promise.all([reload.versions(), reload.schedules(), reload.deadLetters()]));
}

async function loadDetail(name) {
  try {
    const f = await getJson(fnPath(name));
    byId("fn-version").textContent = f.version === null ? "no version" : "v" + f.version;
    const url = byId("fn-url");
    url.textContent = f.url;
    url.setAttribute("href", f.url);
    renderConfig(f.config || {});
    const instances = (f.pool && f.pool.instances) || [];
    fillTable(
      "instances",
      instances.map((i) =>
        h(
          "tr",
          { "data-instance": i.id },
          h("td", { class: "mono" }, i.id),
          h("td", { class: i.state === "ready" ? "ok" : "" }, i.state),
          h("td", { class: "origin" }, i.origin),
          h("td", { class: "num" }, i.inFlight),
          h("td", { class: "num" }, i.served),
          h("td", { class: "num" }, age(i.ageMs)),
          h("td", { class: "num" }, age(i.idleMs)),
          h("td", { class: "num" }, i.memoryMb ? i.memoryMb + " MiB" : "–"),
          h("td", {}, i.node || "–"),
        ),
      ),
      "no instances running (the next request starts one)",
    );
  } catch (err) {
    tableError("instances", err);
  }
}

function renderConfig(config) {
  const rows = [];
  for (const [k, v] of Object.entries(config)) {
    if (k === "name") continue;
    // Values of env are the function's secrets as often as not: names only.
    const text = k === "env" ? Object.keys(v || {}).join(", ") || "–" : Array.isArray(v) ? v.join(", ") || "–" : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
    rows.push(h("dt", {}, k), h("dd", { "data-key": k }, text));
  }
  byId("config").replaceChildren(...rows);
}

async function loadVersions(name, reload) {
  try {
    const { versions } = await getJson(fnPath(name, "/versions"));
    const active = versions.find((v) => v.active);
    fillTable(
      "versions",
      versions.map((v) => {
        const canSwitch = !v.active && v.status === "ready";
        const label = active && v.version > active.version ? "Roll forward" : "Roll back";
        return h(
          "tr",
          { "data-version": v.version, class: v.active ? "active" : "" },
          h("td", {}, "v" + v.version, v.active ? " (active)" : ""),
          h("td", { class: v.status === "ready" ? "ok" : v.status === "failed" ? "bad wrap" : "" }, v.status, v.error ? ": " + v.error : ""),
          h("td", {}, time(v.createdAt)),
          h("td", { class: "mono", title: v.digest || "" }, v.digest ? String(v.digest).replace(/^sha256:/, "").slice(0, 12) : "–"),
          h("td", {}, canSwitch ? h("button", { type: "button", class: "small quiet rollback", onclick: (ev) => rollback(name, v.version, ev.currentTarget, reload) }, label + " to v" + v.version) : ""),
        );
      }),
    );
  } catch (err) {
    tableError("versions", err);
  }
}

async function rollback(name, version, button, reload) {
  button.disabled = true;
  setText("versions-status", "switching to v" + version + "…", "status muted");
  try {
    await getJson(fnPath(name, "/rollback"), { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ version }) });
    setText("versions-status", "", "status muted");
  } catch (err) {
    tableError("versions", err);
  }
  await Promise.all([reload.versions(), reload.detail()]);
}

async function loadInvocations(name) {
  try {
    const { invocations } = await getJson(fnPath(name, "/invocations?limit=20"));
    fillTable(
      "invocations",
      invocations.map((r) =>
        h(
          "tr",
          {},
          h("td", {}, time(r.createdAt)),
          h("td", { class: "num " + statusClass(r.status) }, r.status === null ? r.state : r.status),
          h("td", { class: "num" }, ms(r.durationMs)),
          h("td", {}, r.start || "–"),
          h("td", {}, r.kind),
          h("td", { class: "num" }, "v" + r.version),
          h("td", { class: "mono" }, r.id),
        ),
      ),
    );
  } catch (err) {
    tableError("invocations", err);
  }
}

async function loadSchedules(name) {
  try {
    const { schedules } = await getJson(fnPath(name, "/schedules"));
    fillTable(
      "schedules",
      schedules.map((s) =>
        h(
          "tr",
          {},
          h("td", { class: "mono" }, s.cron),
          h("td", {}, s.timezone || "UTC"),
          h("td", { class: "num" }, s.runs, s.skipped ? " (" + s.skipped + " skipped)" : ""),
          h("td", {}, time(s.lastRunAt)),
          h("td", { class: s.lastStatus === null ? "" : statusClass(s.lastStatus) }, s.lastStatus === null ? "–" : s.lastStatus),
          h("td", {}, time(s.nextRunAt)),
        ),
      ),
    );
  } catch (err) {
    tableError("schedules", err);
  }
}

async function loadDeadLetters(name) {
  try {
    const { deadLetters } = await getJson(fnPath(name, "/dead-letters?limit=20"));
    fillTable(
      "dead-letters",
      deadLetters.map((d) =>
        h("tr", {}, h("td", { class: "mono" }, d.id), h("td", { class: "num" }, d.attempts), h("td", {}, time(d.failedAt)), h("td", { class: "wrap bad" }, d.error || "–")),
      ),
    );
  } catch (err) {
    tableError("dead-letters", err);
  }
}

function setupInvoke(name, reload) {
  const form = byId("invoke-form");
  const answer = byId("invoke-answer");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    setText("invoke-status", "invoking…", "muted");
    const started = performance.now();
    try {
      const type = byId("invoke-type").value.trim();
      const res = await api(fnPath(name, "/invoke"), { method: "POST", headers: type ? { "content-type": type } : {}, body: byId("invoke-body").value });
      const text = await res.text();
      const took = Math.round(performance.now() - started);
      setText("invoke-status", `${res.status} ${res.statusText} · ${took} ms` + (res.headers.get("x-forge-request-id") ? " · " + res.headers.get("x-forge-request-id") : ""), statusClass(res.status));
      answer.textContent = pretty(text, res.headers.get("content-type"));
      answer.hidden = false;
    } catch (err) {
      setText("invoke-status", errorText(err), "error");
      answer.hidden = true;
    }
    button.disabled = false;
    void reload.invocations();
    void reload.detail();
  });
}

function pretty(text, type) {
  if (!type || !type.includes("json")) return text;
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

/** Follows the function's logs (NDJSON) until the page is left; reconnects when the stream ends. */
async function followLogs(name) {
  const list = byId("logs");
  const stop = new AbortController();
  addEventListener("pagehide", () => stop.abort());
  let lastTs;
  const MAX_LINES = 1000;
  const append = (line) => {
    const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(
      h(
        "li",
        { class: line.stream === "stderr" ? "stderr" : "stdout", "data-request": line.requestId },
        h("span", { class: "ts" }, new Date(line.ts).toLocaleTimeString()),
        h("span", { class: "inst", title: line.instance }, (line.node ? line.node + "/" : "") + String(line.instance).slice(-8)),
        h("span", { class: "text" }, line.text),
      ),
    );
    while (list.childElementCount > MAX_LINES) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
    lastTs = line.ts;
  };
  while (!stop.signal.aborted) {
    const since = lastTs === undefined ? "10m" : String(lastTs + 1);
    try {
      const res = await api(fnPath(name, "/logs?follow=1&limit=200&since=" + encodeURIComponent(since)), { signal: stop.signal });
      if (!res.ok) throw await jsonOf(res).catch((e) => e);
      setText("logs-status", "following", "muted");
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const text = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (text === "") continue; // a heartbeat
          try {
            append(JSON.parse(text));
          } catch {
            // not a log line: skip it
          }
        }
      }
      if (!stop.signal.aborted) setText("logs-status", "the stream ended; reconnecting…", "muted");
    } catch (err) {
      if (stop.signal.aborted) return;
      setText("logs-status", errorText(err) + "; retrying…", "error");
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// --- databases ---

async function databasesPage() {
  const form = byId("provision-form");
  const error = byId("provision-error");
  let pending = false;
  const load = async () => {
    try {
      const { jobs } = await getJson("/provision?limit=100");
      pending = jobs.some((j) => j.status === "pending" || j.status === "provisioning" || j.status === "deleting");
      fillTable("databases", jobs.map((j) => databaseRow(j, remove)), "no databases yet");
    } catch (err) {
      tableError("databases", err);
    }
  };
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    const input = byId("service-name");
    try {
      await getJson("/provision", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ service_name: input.value.trim(), resource: "postgres" }) });
      input.value = "";
    } catch (err) {
      error.textContent = errorText(err);
      error.hidden = false;
    }
    await poll();
  });
  // Quick while a job is under way, slow otherwise; at once after a change (one chain of timers).
  let timer;
  let round = 0;
  const poll = async () => {
    clearTimeout(timer);
    const mine = ++round;
    if (!document.hidden) await load();
    if (mine !== round) return; // a newer poll schedules the next
    timer = setTimeout(poll, pending ? 1000 : 10_000);
    timers.push(timer);
  };
  const remove = async (job, button) => {
    if (!confirm(`Delete the database of ${job.service_name}? Its data is dropped.`)) return;
    button.disabled = true;
    error.hidden = true;
    try {
      await getJson("/provision/" + encodeURIComponent(job.id), { method: "DELETE" });
    } catch (err) {
      error.textContent = errorText(err);
      error.hidden = false;
    }
    await poll();
  };
  await poll();
}

function databaseRow(j, remove) {
  const c = j.connection;
  const statusCls = j.status === "ready" ? "ok" : j.status === "failed" ? "bad" : "warn";
  return h(
    "tr",
    { "data-service": j.service_name, "data-status": j.status, "data-id": j.id },
    h("td", {}, j.service_name),
    h("td", { class: "wrap " + statusCls }, j.status, j.detail ? ": " + j.detail : ""),
    h("td", {}, j.backend),
    h("td", {}, time(Date.parse(j.created_at))),
    h(
      "td",
      { class: "wrap mono" },
      c ? h("div", {}, `${c.username}@${c.host}:${c.port}/${c.database}`) : "–",
      j.url ? h("div", { class: "url" }, j.url) : "",
    ),
    h("td", { class: "mono" }, j.id),
    h("td", {}, j.status === "ready" || j.status === "failed" ? h("button", { type: "button", class: "small quiet delete", onclick: (ev) => remove(j, ev.currentTarget) }, "Delete") : ""),
  );
}

// --- nodes ---

async function nodesPage() {
  await every(5000, async () => {
    try {
      const { nodes } = await getJson("/nodes");
      fillTable(
        "nodes",
        nodes.map((n) =>
          h(
            "tr",
            { "data-node": n.id },
            h("td", {}, n.id, n.self ? " (this node)" : ""),
            h("td", { class: "mono" }, n.url),
            h("td", {}, n.driver),
            h("td", {}, n.version),
            h("td", {}, time(n.startedAt)),
            h("td", {}, age(Date.now() - n.heartbeatAt) + " ago"),
          ),
        ),
      );
    } catch (err) {
      tableError("nodes", err);
    }
  });
}
