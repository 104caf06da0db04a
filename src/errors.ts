import type { ConsolaInstance } from "consola";
/**
 * ForgeError is the one error type that crosses module lines. It carries a code from a
 * fixed list, an HTTP status, a message saying what went wrong and a hint saying how to
 * fix it. User errors (4xx) are shown as message + hint; system errors (5xx) are logged
 * with their cause.
 */
export const ErrorCode = {
  // user errors
  BadRequest: "bad_request",
  RequestTimeout: "request_timeout",
  HeadersTooLarge: "headers_too_large",
  InvalidName: "invalid_name",
  InvalidJson: "invalid_json",
  InvalidConfig: "invalid_config",
  InvalidArchive: "invalid_archive",
  ArchiveTooLarge: "archive_too_large",
  BodyTooLarge: "body_too_large",
  BuildFailed: "build_failed",
  /** A deployed module did not load (or its container did not answer): the version is not activated. */
  LoadFailed: "load_failed",
  Unauthorized: "unauthorized",
  NotFound: "not_found",
  FunctionNotFound: "function_not_found",
  VersionNotFound: "version_not_found",
  Conflict: "conflict",
  InvalidCron: "invalid_cron",
  Saturated: "saturated",
  JobNotFound: "job_not_found",
  DatabaseNotFound: "database_not_found",
  DatabaseNotReady: "database_not_ready",
  /** The client went away before its answer (recorded as 499, never sent). */
  ClientClosed: "client_closed",
  /** A request method no instance's server takes (501). */
  MethodNotImplemented: "method_not_implemented",
  // system errors
  QueueTimeout: "queue_timeout",
  FunctionTimeout: "function_timeout",
  InstanceCrashed: "instance_crashed",
  /** An instance answered with bytes that are not valid HTTP (502). */
  BadResponse: "bad_response",
  InstanceStartFailed: "instance_start_failed",
  DriverUnavailable: "driver_unavailable",
  ServiceUnavailable: "service_unavailable",
  /** The metadata database (FORGE_DB) did not answer a repository call (503). */
  StoreUnavailable: "store_unavailable",
  Disposed: "disposed",
  Internal: "internal",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface ForgeErrorOptions {
  /** What the user can do about it; shown under the message. */
  hint?: string;
  /** The underlying error, logged for system errors, never sent to clients. */
  cause?: unknown;
}

export class ForgeError extends Error {
  override readonly name = "ForgeError";
  readonly hint: string | undefined;

  constructor(
    readonly code: ErrorCode,
    readonly status: number,
    message: string,
    options: ForgeErrorOptions = {},
  ) {
    super(message, { cause: options.cause });
    this.hint = options.hint;
  }

  /** 4xx: the caller did something wrong and can fix it. */
  get isUserError(): boolean {
    return this.status >= 400 && this.status < 500;
  }

  toJSON(): { error: { code: ErrorCode; message: string; hint?: string } } {
    return {
      error: { code: this.code, message: this.message, ...(this.hint ? { hint: this.hint } : {}) },
    };
  }

  toResponse(headers?: Record<string, string>): Response {
    const h = new Headers(headers);
    h.set("content-type", "application/json; charset=utf-8");
    return new Response(JSON.stringify(this.toJSON()), { status: this.status, headers: h });
  }
}

export function isForgeError(err: unknown): err is ForgeError {
  return err instanceof ForgeError;
}

/** DNS label rule of DESIGN §8, shared by function names, service names and database names. */
export const NAME_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

export function assertName(name: string, what = "function name"): string {
  if (!NAME_PATTERN.test(name)) {
    throw new ForgeError(ErrorCode.InvalidName, 400, `"${name.slice(0, 80)}" is not a valid ${what}`, {
      hint: "use a DNS label: lowercase letters, digits and '-', starting with a letter, at most 63 characters (e.g. greet-v2)",
    });
  }
  return name;
}

/** Any error as the ForgeError a client is answered with; what is not a user's error is logged. */
export function toForgeError(err: unknown, logger: Pick<ConsolaInstance, "error">): ForgeError {
  if (isForgeError(err)) {
    if (!err.isUserError) logger.error(`${err.code}: ${err.message}`, err.cause ?? "");
    return err;
  }
  logger.error("unexpected error:", err);
  return new ForgeError(ErrorCode.Internal, 500, "forge failed to handle the request", { hint: "this is a bug in forge; the server log has the cause", cause: err });
}

/**
 * A repository call's failure as a client sees it: a 503 store_unavailable, the cause kept
 * for the log. ForgeErrors (a closed store's Disposed) stay as they are.
 */
export function storeUnavailable(err: unknown): ForgeError {
  if (isForgeError(err)) return err;
  return new ForgeError(ErrorCode.StoreUnavailable, 503, "the metadata database did not answer", {
    hint: "the metadata database is not answering; check FORGE_DB and retry",
    cause: err,
  });
}

/**
 * `repo` with every method's throw or rejection turned into storeUnavailable(err): only what
 * comes out of the store is a 503, a bug in the caller's own code stays a 500.
 */
export function guardRepo<T extends object>(repo: T): T {
  const wrapped = new Map<PropertyKey, unknown>();
  return new Proxy(repo, {
    get(target, key) {
      const value: unknown = Reflect.get(target, key);
      if (typeof value !== "function") return value;
      let fn = wrapped.get(key);
      if (!fn) {
        const method = value as (...args: unknown[]) => unknown;
        fn = (...args: unknown[]): unknown => {
          let out: unknown;
          try {
            out = method.apply(target, args);
          } catch (err) {
            throw storeUnavailable(err);
          }
          return out instanceof Promise ? out.catch((err: unknown) => Promise.reject(storeUnavailable(err))) : out;
        };
        wrapped.set(key, fn);
      }
      return fn;
    },
  });
}
