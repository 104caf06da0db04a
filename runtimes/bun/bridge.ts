/**
 * forge's socket bridge for runtime "docker" instances: a function image of the user's own
 * serves HTTP on $PORT over TCP, inside a container with no network (NetworkMode none).
 * This bridge runs in a second container that joins the function container's network
 * namespace (only loopback there) and listens on a Unix socket in the bind-mounted instance
 * folder, so forge reaches every instance the same way: a Unix socket, no published port,
 * no address on any network.
 *
 * It answers forge's health route itself (ok once the function's port accepts a
 * connection) and proxies every other request, streamed both ways, unchanged.
 *
 * Self-contained like the shim (it ships alone in the runtime image): Bun and nothing else.
 */
export {}; // a module: top-level await below

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

async function handle(request: Request): Promise<Response> {
  const url = new URL(request.url);
  if (url.pathname === CONTROL_HEALTH && isControl(request.headers.get(CONTROL_HEADER))) {
    if (!(await upstreamListening())) {
      return jsonError(503, "not_ready", `nothing listens on port ${port} yet`);
    }
    return Response.json({ ok: true, specialized: true, function: fnName, version: fnVersion, pid: process.pid });
  }
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

// Socket mode 0666 (through the umask): forge may run as another uid than this container's.
const umask = process.umask(0o111);
const noIdleTimeout: object = { idleTimeout: 0 };
let server: ReturnType<typeof Bun.serve>;
try {
  server = Bun.serve({ unix: socket, fetch: handle, ...noIdleTimeout });
} catch (err) {
  if ((err as { code?: unknown }).code !== "EADDRINUSE") throw err;
  await Bun.file(socket).delete();
  server = Bun.serve({ unix: socket, fetch: handle, ...noIdleTimeout });
} finally {
  process.umask(umask);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    void server.stop(true);
    process.exit(0);
  });
}
