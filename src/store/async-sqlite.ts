/**
 * The SQLite store behind the async interface, so code written against AsyncStore (and the
 * contract suite, store.case.ts) runs on a single node's SQLite file as on Postgres. The
 * calls stay synchronous underneath; a method's errors come back as rejections, not throws,
 * as they would from Postgres.
 */
import type {
  AsyncFunctionRepo,
  AsyncInvocationRepo,
  AsyncScheduleRepo,
  AsyncStore,
  AsyncVersionRepo,
  Promisified,
  Store,
} from "./types.ts";

/** Each method of `repo`, called synchronously, its result or throw turned into a Promise. */
function promisify<T extends object>(repo: T): Promisified<T> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(repo)) {
    const value = (repo as Record<string, unknown>)[key];
    out[key] =
      typeof value === "function"
        ? async (...args: unknown[]) => (value as (...a: unknown[]) => unknown).apply(repo, args)
        : value;
  }
  return out as Promisified<T>;
}

/** `store` as an AsyncStore; closing it closes `store`. */
export function asyncStore(store: Store): AsyncStore {
  const close = async (): Promise<void> => store.close();
  return {
    functions: promisify(store.functions) satisfies AsyncFunctionRepo,
    versions: promisify(store.versions) satisfies AsyncVersionRepo,
    invocations: promisify(store.invocations) satisfies AsyncInvocationRepo,
    schedules: promisify(store.schedules) satisfies AsyncScheduleRepo,
    close,
    [Symbol.asyncDispose]: close,
  };
}
