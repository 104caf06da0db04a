/** Several forge nodes on one Postgres and one Redis: change notifications, reconcile, the node list, asking peers. */
export { redisChangeBus, type Change, type ChangeBus, type RedisChangeBusOptions } from "./changes.ts";
export { NodeRegistry, type NodeRegistryOptions } from "./registry.ts";
export { Reconciler, type ReconcilerOptions } from "./reconciler.ts";
export { peerClient, type PeerAnswer, type PeerClient, type PeerClientOptions } from "./peers.ts";
export { loadOrCreateNodeId } from "./node-id.ts";
