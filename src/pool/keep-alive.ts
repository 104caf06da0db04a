/**
 * Keep-alive policies decide how long an idle instance is kept before it may be stopped.
 * Fixed TTL first; a per-function idle-time histogram policy ("Serverless in the Wild",
 * ATC'20) can be added behind the same interface.
 */
export interface KeepAlivePolicy {
  readonly name: string;
  /** How long an idle instance of this function is kept, in ms. */
  keepAliveMs(fn: string): number;
  /** Called with each observed idle gap between two requests of a function. */
  observeIdle?(fn: string, idleMs: number): void;
}

export function fixedKeepAlive(ms: number): KeepAlivePolicy {
  return { name: "fixed", keepAliveMs: () => ms };
}
