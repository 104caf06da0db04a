/**
 * forge's socket bridge for runtime "docker" instances: a function image of the user's own
 * serves HTTP on $PORT over TCP, inside a container with no network (NetworkMode none).
 * This bridge runs in a second container that joins the function container's network
 * namespace (only loopback there) and listens on a Unix socket in the bind-mounted instance
 * folder, so forge reaches every instance the same way: a Unix socket, no published port,
 * no address on any network.
 *
 * It answers forge's health route itself (ok once the function's port accepts a
 * connection) and proxies every other request, streamed both ways, unchanged. A WebSocket
 * upgrade is relayed message by message: the bridge opens the same WebSocket on the
 * function's port and only then accepts the client's, so a refused upgrade is a plain error.
 *
 * Self-contained like the shim (it ships alone in the runtime image): Bun and nothing else.
 */
export {}; // a module: top-level await below
import type { Server, ServerWebSocket, WebSocketHandler } from "bun";

const CONTROL_HEADER = "x-forge-control";
const CONTROL_HEALTH = "/__forge/health";

const socket = process.env.FORGE_SOCKET ?? "";
const token = process.env.FORGE_CONTROL_TOKEN ?? "";
const port = Number(process.env.FORGE_UPSTREAM_PORT) || 8080;
const fnName = process.env.FORGE_FUNCTION ?? null;
const fnVersion = process.env.FORGE_VERSION ? Number(process.env.FORGE_VERSION) : null;
const upstream = `http://127.0.0.1:${port}`;
if (!socket) {
  console.error("forge bridge: FORGE_SOCKET is not set");
  process.exit(2);
}

function jsonError(status: number, code: string, message: string, hint?: string): Response {
  return Response.json({ error: { code, message, ...(hint ? { hint } : {}) } }, { status });
}

/** Constant-time comparison with the control token. */
function isControl(header: string | null): boolean {
  if (header === null || token.length === 0 || header.length !== token.length) return false;
  let diff = 0;
  for (let i = 0; i < token.length; i++) diff |= header.charCodeAt(i) ^ token.charCodeAt(i);
  return diff === 0;
}

/** Does the function's port accept a connection yet? */
function upstreamListening(): Promise<boolean> {
  return new Promise((resolve) => {
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.end();
          resolve(true);
        },
        data() {},
        error() {
          resolve(false);
        },
        connectError() {
          resolve(false);
        },
      },
    }).catch(() => resolve(false));
  });
}

async function handle(request: Request): Promise<Response | undefined> {
  const url = new URL(request.url);
  if (url.pathname === CONTROL_HEALTH && isControl(request.headers.get(CONTROL_HEADER))) {
    if (!(await upstreamListening())) {
      return jsonError(503, "not_ready", `nothing listens on port ${port} yet`);
    }
    return Response.json({ ok: true, specialized: true, function: fnName, version: fnVersion, pid: process.pid });
  }
  if (request.headers.get("upgrade")?.toLowerCase() === "websocket") return relayWebSocket(request, url);
  try {
    return await fetch(upstream + url.pathname + url.search, {
      method: request.method,
      headers: request.headers,
      body: request.body,
      redirect: "manual",
      decompress: false,
      // Streams the request body instead of buffering it.
      duplex: "half",
    } as RequestInit);
  } catch (err) {
    return jsonError(502, "instance_crashed", `the function's server on port ${port} did not answer: ${String(err)}`);
  }
}

// --- WebSockets: fetch() cannot carry an upgrade, so the bridge relays messages ---

/** Headers of the client's handshake that the bridge's own WebSocket client sets itself. */
const HANDSHAKE_HEADERS = new Set([
  "connection",
  "upgrade",
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
]);

/** One relayed WebSocket: the function's side, and what it sent before the client's side opened. */
interface Relay {
  upstream: WebSocket;
  client: ServerWebSocket<Relay> | undefined;
  early: (string | ArrayBuffer)[];
}

async function relayWebSocket(request: Request, url: URL): Promise<Response | undefined> {
  const headers: Record<string, string> = {};
  for (const [name, value] of request.headers) if (!HANDSHAKE_HEADERS.has(name)) headers[name] = value;
  const protocols = (request.headers.get("sec-websocket-protocol") ?? "")
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);
  // Bun's client takes headers (Host included) in its options, an extension of the WHATWG constructor.
  const upstream = new WebSocket(`ws://127.0.0.1:${port}${url.pathname}${url.search}`, { headers, ...(protocols.length > 0 ? { protocols } : {}) });
  upstream.binaryType = "arraybuffer";
  const relay: Relay = { upstream, client: undefined, early: [] };
  upstream.addEventListener("message", (event) => {
    const data = event.data as string | ArrayBuffer;
    if (relay.client === undefined) relay.early.push(data);
    else relay.client.send(data);
  });
  upstream.addEventListener("close", (event) => {
    // 1005 and 1006 say no close frame came: they are never sent in one.
    if (event.code === 1005 || event.code === 1006) relay.client?.close();
    else relay.client?.close(event.code, event.reason);
  });
  const opened = await new Promise<boolean>((resolve) => {
    upstream.addEventListener("open", () => resolve(true));
    upstream.addEventListener("close", () => resolve(false));
    // The client left while the function's server had not answered yet.
    request.signal.addEventListener("abort", () => {
      if (relay.client === undefined) upstream.close();
    });
  });
  if (!opened) {
    return jsonError(502, "websocket_refused", `the function's server on port ${port} did not accept the WebSocket upgrade of ${url.pathname}`);
  }
  const chosen = upstream.protocol;
  if (server.upgrade(request, { data: relay, ...(chosen ? { headers: { "sec-websocket-protocol": chosen } } : {}) })) return undefined;
  upstream.close();
  return jsonError(400, "bad_upgrade", "the WebSocket upgrade request is not valid");
}

const relayEvents: WebSocketHandler<Relay> = {
  open(ws) {
    ws.data.client = ws;
    for (const data of ws.data.early.splice(0)) ws.send(data);
  },
  message(ws, message) {
    ws.data.upstream.send(message);
  },
  close(ws, code, reason) {
    // A client WebSocket may only send 1000 or 3000-4999 (WHATWG): other codes close plainly.
    const upstream = ws.data.upstream;
    if (code === 1000 || (code >= 3000 && code <= 4999)) upstream.close(code, reason);
    else upstream.close();
  },
};

// Socket mode 0666 (through the umask): forge may run as another uid than this container's.
const umask = process.umask(0o111);
const noIdleTimeout: object = { idleTimeout: 0 };
let server: Server<Relay>;
try {
  server = Bun.serve({ unix: socket, fetch: handle as (request: Request) => Promise<Response>, websocket: relayEvents, ...noIdleTimeout });
} catch (err) {
  if ((err as { code?: unknown }).code !== "EADDRINUSE") throw err;
  await Bun.file(socket).delete();
  server = Bun.serve({ unix: socket, fetch: handle as (request: Request) => Promise<Response>, websocket: relayEvents, ...noIdleTimeout });
} finally {
  process.umask(umask);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    void server.stop(true);
    process.exit(0);
  });
}
