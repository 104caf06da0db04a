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

/**
 * V8's heap limit for a node instance. Node sizes it from the memory it sees at start, never
 * from memoryMb: a cold instance gets 3/4 of memoryMb (V8 collects harder near it, before the
 * kernel's limit kills); a stem cell, whose function is not known yet, a large one (the
 * memory limit, raised to the function's memoryMb before it loads, is what holds it).
 */
export function nodeHeapFlag(spec: Pick<InstanceSpec, "role" | "memoryMb">): string {
  const mb = spec.role === "cell" ? NODE_CELL_HEAP_MB : Math.max(16, Math.floor(spec.memoryMb * 0.75));
  return `--max-old-space-size=${mb}`;
}

/** A node stem cell's heap limit, MiB (see nodeHeapFlag). */
const NODE_CELL_HEAP_MB = 4096;
