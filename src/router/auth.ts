/** Bearer API-key auth for the control API, compared in constant time. */
import { createHash, timingSafeEqual } from "node:crypto";
import type { MiddlewareHandler } from "hono";
import { ErrorCode, ForgeError } from "../errors.ts";

export function bearerAuth(apiKey: string): MiddlewareHandler {
  // Compare digests so that the comparison takes the same time whatever the lengths.
  const expected = createHash("sha256").update(apiKey).digest();
  return async (c, next) => {
    const header = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    const given = m?.[1] ? createHash("sha256").update(m[1].trim()).digest() : undefined;
    if (!given || !timingSafeEqual(given, expected)) {
      throw new ForgeError(ErrorCode.Unauthorized, 401, header ? "the API key is wrong" : "an API key is required", {
        hint: "send Authorization: Bearer <key>; forge up prints the key and saves it for the CLI (`forge login` adds a remote forge)",
      });
    }
    await next();
  };
}
