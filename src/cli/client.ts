/** A typed client for forge's control API, used by the CLI (and by tests and bench). */
import { ErrorCode, ForgeError, type ErrorCode as Code } from "../errors.ts";
import type { WindowStats } from "../observe/index.ts";
import type { KeepAliveInfo } from "../pool/keep-alive.ts";
import type { MemoryStats } from "../pool/pool-manager.ts";

export interface FunctionSummary {
  name: string;
  version: number | null;
  url: string;
  config: Record<string, unknown> & { concurrency: number; minWarm: number; maxInstances: number; memoryMb: number; timeoutMs: number };
  updatedAt: number;
}

export interface InstanceView {
  id: string;
  state: string;
  inFlight: number;
  origin: string;
  ageMs: number;
  idleMs: number;
  served: number;
  /** Its limit. */
  memoryMb: number;
  /** What the memory budget counts it at. */
  countedMb?: number;
  /** Resident memory last measured. */
  residentMb?: number;
  /** The node running it (several nodes). */
  node?: string;
}

export interface NodeView {
  id: string;
  url: string;
  driver: string;
  version: string;
  startedAt: number;
  heartbeatAt: number;
  /** The node that answered. */
  self: boolean;
}

export interface FunctionInfo extends FunctionSummary {
  createdAt: number;
  stats?: { last5m: WindowStats; last60m: WindowStats };
  pool: null | {
    version: number;
    inFlight: number;
    queued: number;
    desired: number;
    instances: InstanceView[];
    starts: { warm: number; cell: number; cold: number };
    /** How many nodes run the function (several nodes). */
    nodes?: number;
  };
  /** Each node's own pool, or why it did not answer (several nodes). */
  nodes?: { node: string; pool?: unknown; error?: string }[];
  /** The keep-alive windows the answering node's policy gives the function now. */
  keepAlive?: KeepAliveInfo & { prewarms: number };
  /** The answering node's memory budget and what fills it. */
  memory?: MemoryStats;
}

export interface VersionView {
  version: number;
  active: boolean;
  digest: string;
  image: string | null;
  /** starting, ready or failed (absent from a forge older than verified deploys). */
  status?: "starting" | "ready" | "failed";
  error?: string | null;
  createdAt: number;
}

export interface DeployEvent {
  type: "progress" | "result" | "error";
  step?: number;
  of?: number;
  phase?: string;
  message?: string;
  result?: { name: string; version: number; url: string; image: string | null; digest: string };
  status?: number;
  error?: { code: Code; message: string; hint?: string };
}

/** Where a client's URL and key came from, so that its errors can say it (the CLI's client). */
export interface CredentialSource {
  /** e.g. "--url", "FORGE_URL", "target local in ~/.config/forge/config.json" or "the default". */
  urlFrom: string;
  /** Where the key came from, and how to fix it when forge refuses it; undefined: no key. */
  keyFrom: { from: string; fix: string } | undefined;
  /** Where a key was looked for, in order (said when there was none). */
  looked: readonly string[];
}

export class ForgeClient {
  constructor(
    readonly baseUrl: string,
    private readonly apiKey: string | undefined,
    private readonly source?: CredentialSource,
  ) {}

  /** Raw request to the control API; errors become ForgeErrors with the server's hint. */
  async request(method: string, path: string, init: { body?: string | Uint8Array; headers?: Record<string, string>; json?: unknown; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { ...(init.headers ?? {}) };
    if (this.apiKey) headers.authorization = `Bearer ${this.apiKey}`;
    let body = init.body;
    if (init.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(init.json);
    }
    let res: Response;
    try {
      res = await fetch(new URL(path, this.baseUrl), { method, headers, ...(body !== undefined ? { body } : {}), ...(init.signal ? { signal: init.signal } : {}) });
    } catch (cause) {
      if (init.signal?.aborted) throw cause;
      throw new ForgeError(ErrorCode.DriverUnavailable, 503, `cannot reach forge at ${this.baseUrl}${this.source ? ` (${this.source.urlFrom === "the default" ? "the default URL" : `the URL from ${this.source.urlFrom}`})` : ""}`, {
        hint: "start it with `forge up` (or `npm start`), or point --url, --target or FORGE_URL at a running forge",
        cause,
      });
    }
    if (res.status >= 400) {
      const err = await errorOf(res);
      throw err.code === ErrorCode.Unauthorized && this.source ? refused(this.baseUrl, this.apiKey !== undefined, this.source) : err;
    }
    return res;
  }

  async json<T>(method: string, path: string, json?: unknown): Promise<T> {
    const res = await this.request(method, path, json === undefined ? {} : { json });
    return (await res.json()) as T;
  }

  list(): Promise<{ functions: FunctionSummary[] }> {
    return this.json("GET", "/v1/functions");
  }
  nodes(): Promise<{ nodes: NodeView[] }> {
    return this.json("GET", "/v1/nodes");
  }
  info(name: string): Promise<FunctionInfo> {
    return this.json("GET", `/v1/functions/${encodeURIComponent(name)}`);
  }
  delete(name: string): Promise<{ name: string; deleted: boolean }> {
    return this.json("DELETE", `/v1/functions/${encodeURIComponent(name)}`);
  }
  versions(name: string): Promise<{ versions: VersionView[] }> {
    return this.json("GET", `/v1/functions/${encodeURIComponent(name)}/versions`);
  }
  rollback(name: string, version?: number): Promise<{ name: string; version: number }> {
    return this.json("POST", `/v1/functions/${encodeURIComponent(name)}/rollback`, version === undefined ? {} : { version });
  }
  patch(name: string, patch: Record<string, unknown>): Promise<{ name: string; version: number; config: Record<string, unknown> }> {
    return this.json("PATCH", `/v1/functions/${encodeURIComponent(name)}`, patch);
  }

  /** Deploys an archive, calling `onEvent` for each progress line; resolves with the result. */
  async deploy(name: string, archive: Uint8Array, overrides: Record<string, unknown>, onEvent: (e: DeployEvent) => void = () => {}): Promise<NonNullable<DeployEvent["result"]>> {
    const res = await this.request("POST", `/v1/functions/${encodeURIComponent(name)}/deploy`, {
      body: archive,
      headers: {
        "content-type": "application/gzip",
        accept: "application/x-ndjson",
        "x-forge-config": Buffer.from(JSON.stringify(overrides)).toString("base64"),
      },
    });
    let result: DeployEvent["result"];
    for await (const line of lines(res)) {
      const event = JSON.parse(line) as DeployEvent;
      onEvent(event);
      if (event.type === "result") result = event.result;
      if (event.type === "error" && event.error) {
        throw new ForgeError(event.error.code, event.status ?? 400, event.error.message, event.error.hint ? { hint: event.error.hint } : {});
      }
    }
    if (!result) throw new ForgeError(ErrorCode.Internal, 502, "the deploy ended without a result", { hint: "see forge's log" });
    return result;
  }

  /** Invokes a function through the control API. */
  invoke(name: string, body: string | undefined, options: { async?: boolean; contentType?: string } = {}): Promise<Response> {
    const q = options.async ? "?async=1" : "";
    return this.request("POST", `/v1/functions/${encodeURIComponent(name)}/invoke${q}`, {
      ...(body !== undefined ? { body } : {}),
      headers: { "content-type": options.contentType ?? "application/json" },
    });
  }
}

// --- internal ---

/** A 401 that says where the key came from (or where none was found) and how to fix it. */
function refused(url: string, hadKey: boolean, source: CredentialSource): ForgeError {
  if (hadKey && source.keyFrom) {
    return new ForgeError(ErrorCode.Unauthorized, 401, `the API key from ${source.keyFrom.from} was refused by forge at ${url}`, { hint: source.keyFrom.fix });
  }
  return new ForgeError(ErrorCode.Unauthorized, 401, `forge at ${url} wants an API key, and none was found (looked in ${source.looked.join(", ")})`, {
    hint: `run \`forge login --url ${url}\` and give it the key forge up printed, or set FORGE_API_KEY`,
  });
}

async function errorOf(res: Response): Promise<ForgeError> {
  const text = await res.text();
  try {
    const parsed = JSON.parse(text) as { error?: { code?: Code; message?: string; hint?: string } };
    if (parsed.error?.message) {
      return new ForgeError(parsed.error.code ?? ErrorCode.Internal, res.status, parsed.error.message, parsed.error.hint ? { hint: parsed.error.hint } : {});
    }
  } catch {
    // not JSON: fall through
  }
  return new ForgeError(ErrorCode.Internal, res.status, `forge answered ${res.status}: ${text.slice(0, 200)}`);
}

/** The non-empty lines of an NDJSON response body, as they arrive. */
export async function* lines(res: Response): AsyncGenerator<string> {
  if (!res.body) return;
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) yield line;
    }
  }
  if (buf.trim()) yield buf.trim();
}
