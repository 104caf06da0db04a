import { ErrorCode, ForgeError } from "../errors.ts";

/** Reads a request body into memory, refusing more than `limit` bytes (counted as it streams). */
export async function readBodyLimited(req: Request, limit: number, what = "body"): Promise<Uint8Array> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (Number.isFinite(declared) && declared > limit) throw tooLarge(what, limit);
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of req.body as unknown as AsyncIterable<Uint8Array>) {
    total += chunk.byteLength;
    if (total > limit) throw tooLarge(what, limit);
    chunks.push(chunk);
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
}

/** Parses a JSON body; empty bodies give `fallback`. Malformed JSON is a 400 with a hint. */
export async function readJson(req: Request, limit: number, fallback: unknown = {}): Promise<unknown> {
  const bytes = await readBodyLimited(req, limit, "JSON body");
  const text = new TextDecoder().decode(bytes).trim();
  if (text === "") return fallback;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ForgeError(ErrorCode.InvalidJson, 400, `the request body is not valid JSON: ${(err as Error).message}`, {
      hint: `send a JSON object with Content-Type: application/json, e.g. {"version": 1}`,
    });
  }
}

export function tooLarge(what: string, limit: number): ForgeError {
  return new ForgeError(ErrorCode.BodyTooLarge, 413, `the ${what} is larger than ${Math.round(limit / 1024 / 1024)} MB`, {
    hint: "send less, or raise the limit (FORGE_MAX_BODY_MB for requests, FORGE_MAX_ARCHIVE_MB for deploys)",
  });
}
