/** The pool: drivers, instances, function pools, stem cells, autoscaling, keep-alive. */
export type { Driver, Endpoint, ExitInfo, InstanceHandle, InstanceRole, InstanceSpec, ListedInstance, LogLine, LogOptions, SpecializeRequest } from "./driver.ts";
export { BUNDLE_FILE, CONTROL_DRAIN, CONTROL_HEADER, CONTROL_HEALTH, CONTROL_INVOKE, CONTROL_SCHEDULED, CONTROL_SPECIALIZE } from "./driver.ts";
export type { InstanceExit, InstanceSnapshot, Lease, PoolSnapshot, PoolSpec, StartCounts, StartKind } from "./types.ts";
export { FakeClock, realClock, type Clock, type TimerHandle } from "./clock.ts";
export { fixedKeepAlive, histogramKeepAlive, type KeepAliveInfo, type KeepAlivePolicy, type KeepAliveWindows } from "./keep-alive.ts";
export { CELLS, MemoryLedger } from "./memory-ledger.ts";
export { FunctionPool } from "./function-pool.ts";
export { PoolManager, type Activation, type PoolManagerOptions } from "./pool-manager.ts";
export { drain, forward, health, specialize, waitReady } from "./instance-client.ts";
export { Abort, isIdempotent, UpstreamPool, type UpstreamPoolOptions, type UpstreamReply, type UpstreamRequest } from "./upstream.ts";
export { createProcessDriver } from "./process-driver.ts";
export { createFakeDriver } from "./fake-driver.ts";
export { createDockerDriver, type ActiveVersion, type DockerDriver, type DockerDriverOptions, type ReconcileReport } from "./docker-driver.ts";
export { connectDocker, DEFAULT_DOCKER_SOCKET, pingDocker, selectDriver, type SelectDriverConfig, type SelectedDriver } from "./select-driver.ts";
