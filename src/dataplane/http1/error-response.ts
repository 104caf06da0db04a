import type { ForgeError } from "../../errors.ts";

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  404: "Not Found",
  408: "Request Timeout",
  413: "Payload Too Large",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/** A whole HTTP/1.1 error response with forge's JSON error body (only its head for a HEAD request). */
export function errorBytes(err: ForgeError, requestId: string, close: boolean, headOnly: boolean): Buffer {
  const body = Buffer.from(JSON.stringify(err.toJSON()), "utf8");
  const head =
    `HTTP/1.1 ${err.status} ${STATUS_TEXT[err.status] ?? "Error"}\r\ncontent-type: application/json; charset=utf-8\r\n` +
    `content-length: ${body.length}\r\nx-forge-request-id: ${requestId}\r\n${close ? "connection: close\r\n" : ""}\r\n`;
  // A response to HEAD has no body, whatever its content-length says.
  return headOnly ? Buffer.from(head, "latin1") : Buffer.concat([Buffer.from(head, "latin1"), body]);
}
