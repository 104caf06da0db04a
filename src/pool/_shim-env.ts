/** What both local drivers tell the shim through its environment, besides where it listens. */
import type { InstanceSpec } from "./driver.ts";

/**
 * What the shim is told of the function besides its code (names and values of the spec;
 * the shim reads and deletes them before the function runs).
 */
export function shimSettings(spec: InstanceSpec): Record<string, string> {
  return {
    ...(spec.function !== undefined ? { FORGE_FUNCTION: spec.function } : {}),
    ...(spec.version !== undefined ? { FORGE_VERSION: String(spec.version) } : {}),
    ...(spec.timeoutMs !== undefined ? { FORGE_TIMEOUT_MS: String(spec.timeoutMs) } : {}),
    FORGE_MEMORY_MB: String(spec.memoryMb),
    ...(spec.handler ? { FORGE_HANDLER: spec.handler } : {}),
    ...(spec.region ? { FORGE_REGION: spec.region } : {}),
    FORGE_ENV_NAMES: Object.keys(spec.env).join(","),
  };
}
