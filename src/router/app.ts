/**
 * The router: one Hono app for the control API (/v1 on the apex host), the data plane
 * (<name>.<domain> and /fn/<name>/...), the health endpoints and the dashboard (/ui). It knows nothing of
 * Bun.serve; src/server.ts hands app.fetch to it.
 */
import type { ConsolaInstance } from "consola";
import { Hono, type Context } from "hono";
import { ErrorCode, ForgeError, isForgeError, toForgeError } from "../errors.ts";
import type { FunctionService, InvocationRecorder } from "../functions/index.ts";
import type { FunctionLogLine, LogStore } from "../observe/index.ts";
import type { PeerClient } from "../cluster/index.ts";
import type { NodeRecord } from "../store/index.ts";
import { windowStats } from "../observe/index.ts";
import type { PoolManager, UpstreamPool } from "../pool/index.ts";
import { parseDuration } from "../config.ts";
import { bearerAuth } from "./auth.ts";
import { readBodyLimited, readJson } from "./_body.ts";
import { DataPlane, functionOfHost, isValidHost } from "../dataplane/index.ts";
import { mountDashboard } from "./ui/index.ts";

export interface RouterOptions {
  /** Functions answer at <name>.<domain>. */
  domain: string;
  apiKey: string;
  functions: FunctionService;
  pool: PoolManager;
  recorder: InvocationRecorder;
  logger: ConsolaInstance;
  /** Request body limit of invoke, bytes. */
  maxBodyBytes: number;
  /** Compressed deploy archive limit, bytes. */
  maxArchiveBytes: number;
  /** Readiness (GET /readyz). Default always ready. */
  ready?: () => boolean;
  /** Prometheus text for GET /metrics. */
  metrics?: () => string | Promise<string>;
  /** Function logs (GET /v1/functions/:name/logs). */
  logs?: LogStore;
  /** Flushes pending invocation records before they are read; resolves once they were written (or the write failed). */
  flushRecords?: () => void | Promise<void>;
  /** Queues an async invoke (?async=1) and resolves with its id (triggers); absent: async invokes are refused. */
  invokeAsync?: (name: string, request: { body: Uint8Array; contentType: string | null; path: string }) => Promise<{ id: string }>;
  /** More /v1 routes (provisioner, triggers), mounted behind auth. */
  extend?: (v1: Hono) => void;
  /** Connections to instances for the data plane; default: its own. */
  upstream?: UpstreamPool;
  /** How often a followed log stream sends an empty line, ms. Default 30 s. */
  heartbeatMs?: number;
  /**
   * The nodes (GET /v1/nodes), and with several of them whom to ask for the rest of the
   * cluster's logs and instances (a question with ?local=1 is answered from this node alone).
   */
  nodes?: {
    self: string;
    /** The nodes alive now, this one included. */
    list(): Promise<NodeRecord[]>;
    /** Absent on a single node. */
    peers?: PeerClient;
  };
}

/** A log line as the API gives it: with the node that wrote it when there are several. */
type NodeLogLine = FunctionLogLine & { node?: string };

export type ForgeApp = Hono;

export function createRouter(o: RouterOptions): ForgeApp {
  const app = new Hono();
  const dataPlane = new DataPlane({ pool: o.pool, recorder: o.recorder, logger: o.logger, maxBodyBytes: o.maxBodyBytes, ...(o.upstream ? { upstream: o.upstream } : {}) });
  const hostSuffix = "." + o.domain;

  app.onError((err, c) => errorResponse(err, o.logger, c.req.header("x-forge-request-id")));
  app.notFound(() =>
    new ForgeError(ErrorCode.NotFound, 404, "no such route", { hint: "the control API lives under /v1 (see README.md); functions answer at <name>." + o.domain }).toResponse(),
  );


  app.get("/healthz", (c) => c.json({ ok: true }));
  app.get("/readyz", (c) => {
    const ready = o.ready?.() ?? true;
    const { cells, cellsStarting, cellsByRuntime } = o.pool.stats();
    return c.json({ ready, stemCells: cells, stemCellsByRuntime: cellsByRuntime, stemCellsStarting: cellsStarting }, ready ? 200 : 503);
  });
  app.get("/metrics", async (c) => {
    if (!o.metrics) return c.text("", 200);
    return c.body(await o.metrics(), 200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
  });

  // Data plane by path, for clients that cannot set Host.
  app.all("/fn/:name{[^/]+}/*", (c) => dataPlane.invoke(c.req.param("name"), c.req.raw, { path: stripPrefix(c.req.url, c.req.param("name")) }));
  app.all("/fn/:name{[^/]+}", (c) => dataPlane.invoke(c.req.param("name"), c.req.raw, { path: stripPrefix(c.req.url, c.req.param("name")) }));

  const v1 = new Hono();
  v1.use("*", bearerAuth(o.apiKey));

  v1.post("/functions/:name/deploy", async (c) => {
    const name = c.req.param("name");
    const type = (c.req.header("content-type") ?? "").split(";")[0]?.trim().toLowerCase() ?? "";
    if (!["application/gzip", "application/x-gzip", "application/octet-stream", "application/x-tar+gzip", "application/tar+gzip"].includes(type)) {
      throw new ForgeError(ErrorCode.InvalidArchive, 415, `deploy expects a tar.gz body, got Content-Type "${type || "none"}"`, {
        hint: "send the archive with Content-Type: application/gzip (tar czf fn.tgz -C dir . ; curl --data-binary @fn.tgz ...), or use `forge deploy`",
      });
    }
    const archive = await readBodyLimited(c.req.raw, o.maxArchiveBytes, "archive");
    const overrides = parseOverrides(c.req.header("x-forge-config"));
    const wantsStream = (c.req.header("accept") ?? "").includes("application/x-ndjson");
    if (!wantsStream) {
      const result = await o.functions.deploy(name, archive, undefined, overrides);
      return c.json(result, 201);
    }
    const enc = new TextEncoder();
    const stream = new ReadableStream<Uint8Array>({
      async start(controller) {
        const send = (obj: unknown): void => controller.enqueue(enc.encode(JSON.stringify(obj) + "\n"));
        try {
          const result = await o.functions.deploy(name, archive, (p) => send({ type: "progress", ...p }), overrides);
          send({ type: "result", result });
        } catch (err) {
          const fe = toForgeError(err, o.logger);
          send({ type: "error", status: fe.status, ...fe.toJSON() });
        }
        controller.close();
      },
    });
    return new Response(stream, { status: 200, headers: { "content-type": "application/x-ndjson" } });
  });

  /** The other nodes' answers to `path` (asked with ?local=1); undefined on a single node or when asked by a peer. */
  const askCluster = async <T,>(path: string): Promise<PeerAnswerOf<T>[] | undefined> => {
    if (!o.nodes?.peers) return undefined;
    const peers = (await o.nodes.list()).filter((n) => n.id !== o.nodes?.self);
    return o.nodes.peers.ask<T>(peers, path);
  };

  v1.get("/functions", async (c) =>
    c.json({
      functions: (await o.functions.list()).map((f) => ({
        name: f.name,
        version: f.activeVersion,
        url: urlOf(c, f.name, o.domain),
        config: f.config,
        updatedAt: f.updatedAt,
      })),
    }),
  );

  v1.get("/functions/:name", async (c) => {
    const f = await o.functions.get(c.req.param("name"));
    const local = isLocal(c);
    const here = o.pool.snapshot(f.name) ?? null;
    if (local) return c.json({ name: f.name, node: o.nodes?.self, pool: here });
    await o.flushRecords?.();
    const recent = await o.functions.invocations(f.name, { since: Date.now() - 60 * 60_000, limit: 100_000 });
    const cluster = (await askCluster<unknown>(`/v1/functions/${f.name}`))?.map((a): PeerAnswerOf<{ pool: PoolView | null }> =>
      a.value === undefined || isPoolAnswer(a.value) ? (a as PeerAnswerOf<{ pool: PoolView | null }>) : { node: a.node, error: UNEXPECTED_ANSWER },
    );
    return c.json({
      stats: { last5m: windowStats(recent, 5), last60m: windowStats(recent, 60) },
      name: f.name,
      version: f.activeVersion,
      url: urlOf(c, f.name, o.domain),
      config: f.config,
      createdAt: f.createdAt,
      updatedAt: f.updatedAt,
      pool: cluster ? mergePools(f.activeVersion, [{ node: o.nodes?.self ?? "", value: { pool: here } }, ...cluster]) : here,
      // This node's: the keep-alive windows the policy gives the function now, and the memory budget.
      keepAlive: o.pool.keepAliveOf(f.name),
      memory: o.pool.memory(),
      ...(cluster ? { nodes: [{ node: o.nodes?.self, pool: here }, ...cluster.map((a) => ({ node: a.node, ...(a.value ? { pool: a.value.pool } : { error: a.error }) }))].sort((x, y) => String(x.node).localeCompare(String(y.node))) } : {}),
    });
  });

  v1.get("/functions/:name/invocations", async (c) => {
    const name = c.req.param("name");
    await o.functions.get(name);
    await o.flushRecords?.();
    const limit = queryInt(c.req.query("limit"), "limit", 100, 1, 10_000);
    const status = c.req.query("status") === undefined ? undefined : queryInt(c.req.query("status"), "status", 0, 100, 599);
    return c.json({ invocations: await o.functions.invocations(name, { limit, ...(status !== undefined ? { status } : {}) }) });
  });

  v1.get("/functions/:name/logs", async (c) => {
    const name = c.req.param("name");
    await o.functions.get(name);
    if (!o.logs) return c.json({ lines: [] });
    const logs = o.logs;
    const sinceText = c.req.query("since");
    let since: number | undefined;
    if (sinceText) {
      const ms = parseDuration(sinceText);
      const at = /^\d{10,}$/.test(sinceText) ? Number(sinceText) : ms === undefined ? Date.parse(sinceText) : Date.now() - ms;
      if (!Number.isFinite(at)) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `since=${sinceText.slice(0, 40)} is not a duration or a time`, { hint: "use e.g. since=10m, since=1h or an ISO time" });
      }
      since = at;
    }
    const requestId = c.req.query("request") || undefined;
    const limit = queryInt(c.req.query("limit"), "limit", 1000, 1, 100_000);
    const query = { ...(since !== undefined ? { since } : {}), ...(requestId ? { requestId } : {}), limit };
    const follow = c.req.query("follow") === "1" || c.req.query("follow") === "true";
    // A peer asked for the live part only (it merged the history itself).
    const history = c.req.query("history") !== "0";
    const self = o.nodes?.peers ? o.nodes.self : undefined;
    const tag = (line: FunctionLogLine): NodeLogLine => (self ? { ...line, node: self } : line);
    const peers = !isLocal(c) && o.nodes?.peers ? await o.nodes.list().then((all) => all.filter((n) => n.id !== o.nodes?.self)) : [];
    const peerPath = (extra: Record<string, string>): string => {
      const u = new URL(`/v1/functions/${name}/logs`, "http://peer");
      if (since !== undefined) u.searchParams.set("since", String(since));
      if (requestId) u.searchParams.set("request", requestId);
      u.searchParams.set("limit", String(limit));
      for (const [k, v] of Object.entries(extra)) u.searchParams.set(k, v);
      return u.pathname + u.search;
    };
    /** The history of every node, in time order, the newest `limit` lines. */
    const readPast = async (): Promise<NodeLogLine[]> => {
      if (!history) return [];
      const mine = (await logs.read(name, query)).map(tag);
      if (peers.length === 0 || !o.nodes?.peers) return mine;
      const theirs = await o.nodes.peers.ask<unknown>(peers, peerPath({}));
      // In time order; lines of one millisecond by node, each node's in the order it wrote them:
      // the same order whichever node merges.
      const all = [mine, ...theirs.map((a) => peerLines(a.value))].flatMap((lines) => lines.map((line, i) => ({ line, i })));
      all.sort((x, y) => x.line.ts - y.line.ts || (x.line.node ?? "").localeCompare(y.line.node ?? "") || x.i - y.i);
      return all.slice(-limit).map((x) => x.line);
    };
    if (!follow) return c.json({ lines: await readPast() });

    const enc = new TextEncoder();
    const stop = new AbortController();
    let heartbeat: ReturnType<typeof setInterval> | undefined;
    let unfollow = (): void => {};
    const unsubscribe = (): void => {
      unfollow();
      stop.abort();
      clearInterval(heartbeat);
    };
    // Live lines are taken from now on, held while the history is read, then sent after it
    // without the ones it already had: nothing written meanwhile is lost or sent twice.
    let held: NodeLogLine[] | undefined = [];
    let deliver = (line: NodeLogLine): void => void held?.push(line);
    const onLine = (line: NodeLogLine): void => {
      if (requestId && line.requestId !== requestId) return;
      deliver(line);
    };
    unfollow = logs.follow(name, (line) => onLine(tag(line)));
    c.req.raw.signal.addEventListener("abort", () => unsubscribe(), { once: true });
    if (peers.length > 0 && o.nodes?.peers) await o.nodes.peers.follow(peers, peerPath({ follow: "1", history: "0" }), (line) => onLine(line as NodeLogLine), stop.signal);
    const past = await readPast();
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        if (stop.signal.aborted) return controller.close(); // the client left while the history was read
        const send = (text: string): void => {
          try {
            controller.enqueue(enc.encode(text));
          } catch {
            unsubscribe(); // the client went away
          }
        };
        const seen = new Set(past.map(lineKey));
        const first = [...past, ...(held ?? []).filter((line) => !seen.has(lineKey(line)))];
        held = undefined;
        for (const line of first) send(JSON.stringify(line) + "\n");
        // Bun sends a streamed answer's head with its first bytes: a follow with nothing to
        // send yet would leave the client (a peer merging the cluster's lines gives up after
        // 2 s) without even a status. An empty line (a heartbeat) goes out at once instead.
        if (first.length === 0) send("\n");
        deliver = (line) => send(JSON.stringify(line) + "\n");
        // An empty line now and then: a quiet stream is not an idle connection (FORGE_IDLE_TIMEOUT).
        heartbeat = setInterval(() => send("\n"), o.heartbeatMs ?? 30_000);
        heartbeat.unref?.();
      },
      cancel() {
        unsubscribe();
      },
    });
    return new Response(stream, { headers: { "content-type": "application/x-ndjson", "cache-control": "no-cache" } });
  });

  v1.get("/nodes", async () => {
    const nodes = o.nodes ? await o.nodes.list() : [];
    return Response.json({ nodes: nodes.map((n) => ({ ...n, self: n.id === o.nodes?.self })) });
  });

  v1.patch("/functions/:name", async (c) => {
    const body = await readJson(c.req.raw, 1024 * 1024);
    const f = await o.functions.patch(c.req.param("name"), body);
    return c.json({ name: f.name, version: f.activeVersion, config: f.config });
  });

  v1.delete("/functions/:name", async (c) => {
    const name = c.req.param("name");
    await o.functions.delete(name);
    return c.json({ name, deleted: true });
  });

  v1.get("/functions/:name/versions", async (c) => {
    const versions = await o.functions.versions(c.req.param("name"));
    return c.json({
      versions: versions.map((v) => ({ version: v.version, active: v.active, digest: v.digest, image: v.image, status: v.status, error: v.error, createdAt: v.createdAt, config: v.config })),
    });
  });

  v1.post("/functions/:name/rollback", async (c) => {
    const body = await readJson(c.req.raw, 64 * 1024);
    let to: number | undefined;
    if (body !== null && typeof body === "object" && "version" in body) {
      const v = (body as { version: unknown }).version;
      if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `"version" must be a positive whole number`, { hint: `e.g. {"version": 1}, or {} for the previous version` });
      }
      to = v;
    }
    const v = await o.functions.rollback(c.req.param("name"), to);
    return c.json({ name: v.function, version: v.version, active: true });
  });

  v1.post("/functions/:name/invoke", async (c) => {
    const name = c.req.param("name");
    await o.functions.get(name);
    const url = new URL(c.req.url);
    const asyncFlag = url.searchParams.get("async");
    url.searchParams.delete("async");
    const req = c.req.raw;
    if (asyncFlag !== null && asyncFlag !== "0" && asyncFlag !== "false") {
      if (!o.invokeAsync) throw new ForgeError(ErrorCode.BadRequest, 400, "this forge does not run async invocations", { hint: "invoke without ?async=1" });
      const body = await readBodyLimited(req, o.maxBodyBytes);
      const { id } = await o.invokeAsync(name, { body, contentType: req.headers.get("content-type"), path: "/" + url.search });
      return c.json({ id, status: "queued" }, 202, { location: `/v1/invocations/${id}` });
    }
    return dataPlane.invoke(name, req, { path: "/" + url.search, dropHeaders: ["authorization"], control: "invoke" });
  });

  o.extend?.(v1);
  app.route("/v1", v1);
  mountDashboard(app);

  // Data plane by subdomain: the whole request goes to the function, /v1 paths included.
  // Checked before Hono dispatches, since this is the hot path and needs no routing.
  const dispatch = app.fetch;
  app.fetch = (req, env, ctx) => {
    // A client's request id is never forge's (see newRequestId): what answers carry is set below.
    if (req.headers.has("x-forge-request-id")) req.headers.delete("x-forge-request-id");
    const host = req.headers.get("host");
    // Bun's server joins repeated lines with ", ": a request with two Hosts is malformed (RFC 9112 §3.2).
    if (host !== null && host.includes(",")) {
      return new ForgeError(ErrorCode.BadRequest, 400, "the request has more than one Host header", { hint: "send exactly one Host header" }).toResponse();
    }
    if (host !== null && !isValidHost(host)) {
      return new ForgeError(ErrorCode.BadRequest, 400, "the request's Host is not a host name with an optional port up to 65535", { hint: "e.g. Host: greet.localhost:8080" }).toResponse();
    }
    if (req.method === "CONNECT") {
      return new ForgeError(ErrorCode.MethodNotImplemented, 501, "forge is not a forward proxy: CONNECT is not implemented", { hint: "send requests to functions directly" }).toResponse();
    }
    const name = host === null ? undefined : functionOfHost(host, hostSuffix);
    if (name === undefined) return dispatch(req, env, ctx);
    return dataPlane.invoke(name, req, { path: pathOf(req.url) }).catch((err: unknown) => errorResponse(err, o.logger, req.headers.get("x-forge-request-id") ?? undefined));
  };
  return app;
}


// --- internal ---

function queryInt(v: string | undefined, name: string, def: number, min: number, max: number): number {
  if (v === undefined || v === "") return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ForgeError(ErrorCode.BadRequest, 400, `${name}=${v.slice(0, 20)} is out of range`, { hint: `use a whole number from ${min} to ${max}` });
  }
  return n;
}

/** Flags of `forge deploy` travel as base64 JSON in X-Forge-Config and override forge.json. */
function parseOverrides(header: string | undefined): unknown {
  if (!header) return {};
  try {
    return JSON.parse(Buffer.from(header, "base64").toString("utf8"));
  } catch {
    throw new ForgeError(ErrorCode.InvalidConfig, 400, "X-Forge-Config is not base64 of a JSON object", {
      hint: "send base64(JSON) of forge.json fields, e.g. base64('{\"minWarm\":1}'), or leave the header out",
    });
  }
}

function errorResponse(err: unknown, logger: ConsolaInstance, requestId?: string): Response {
  return toForgeError(err, logger).toResponse(requestId ? { "x-forge-request-id": requestId } : undefined);
}

/** Path and query of an absolute URL, without parsing it (the hot path). */
function pathOf(url: string): string {
  const slash = url.indexOf("/", url.indexOf("//") + 2);
  return slash < 0 ? "/" : url.slice(slash);
}

/** The path after /fn/<name>, cut from the raw path (the name may be percent-encoded there). */
function stripPrefix(rawUrl: string, _name: string): string {
  const url = new URL(rawUrl);
  const slash = url.pathname.indexOf("/", "/fn/".length);
  const rest = slash < 0 ? "/" : url.pathname.slice(slash);
  return rest + url.search;
}

function urlOf(c: Context, name: string, domain: string): string {
  const host = c.req.header("host") ?? "";
  const colon = host.lastIndexOf(":");
  const port = colon > host.lastIndexOf("]") ? host.slice(colon) : "";
  return `http://${name}.${domain}${port}`;
}

/** A question from a peer: answered from this node alone (it merges the answers itself). */
function isLocal(c: Context): boolean {
  return c.req.query("local") === "1";
}

type PeerAnswerOf<T> = { node: string; value?: T; error?: string };
type PoolView = NonNullable<ReturnType<PoolManager["snapshot"]>>;

/** A peer that answers in another shape (another forge version, or not forge at all) is left out. */
const UNEXPECTED_ANSWER = "an answer in a shape this node does not know (another forge version?)";

function isPoolAnswer(value: unknown): value is { pool: PoolView | null } {
  if (typeof value !== "object" || value === null || !("pool" in value)) return false;
  const pool = (value as { pool: unknown }).pool;
  if (pool === null) return true;
  const p = pool as Partial<Record<keyof PoolView, unknown>> | undefined;
  return typeof p === "object" && Array.isArray(p.instances) && typeof p.starts === "object" && p.starts !== null;
}

/** A peer's log lines: those shaped like log lines. */
function peerLines(value: unknown): NodeLogLine[] {
  const lines = typeof value === "object" && value !== null ? (value as { lines?: unknown }).lines : undefined;
  if (!Array.isArray(lines)) return [];
  return lines.filter((l): l is NodeLogLine => typeof l === "object" && l !== null && typeof (l as NodeLogLine).ts === "number" && typeof (l as NodeLogLine).text === "string");
}

/** The same log line seen twice (from the history and from the live stream). */
function lineKey(line: NodeLogLine): string {
  return `${line.node ?? ""}\u0000${line.instance}\u0000${line.ts}\u0000${line.stream}\u0000${line.text}`;
}

/**
 * One function's pools on every node as one: counts summed, instances of all nodes (each
 * with its node) in one list ordered by node, so any node gives the same answer.
 */
function mergePools(version: number | null, answers: PeerAnswerOf<{ pool: PoolView | null }>[]): (PoolView & { nodes: number }) | null {
  const pools = answers.flatMap((a) => (a.value?.pool ? [{ node: a.node, pool: a.value.pool }] : [])).sort((a, b) => a.node.localeCompare(b.node));
  const first = pools[0]?.pool;
  if (!first) return null;
  const sum = (pick: (p: PoolView) => number): number => pools.reduce((n, p) => n + pick(p.pool), 0);
  return {
    ...first,
    version: version ?? first.version,
    draining: pools.some((p) => p.pool.draining),
    inFlight: sum((p) => p.inFlight),
    queued: sum((p) => p.queued),
    desired: sum((p) => p.desired),
    instances: pools.flatMap((p) => p.pool.instances.map((i) => ({ ...i, node: p.node }))),
    starts: { warm: sum((p) => p.starts.warm), cell: sum((p) => p.starts.cell), cold: sum((p) => p.starts.cold) },
    nodes: pools.length,
  };
}
