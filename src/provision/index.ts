/** Provisioning: Postgres databases on demand (broker, job store, queue, worker, backends) and the Queue shared with async invocations. */
export { StaleDelivery } from "./_queue-shared.ts";
export { backoffDelay, PermanentError, type ConsumeOptions, type Consumer, type DeadLetter, type HandlerContext, type Queue, type QueueMessage, type RetryPolicy } from "./queue.ts";
export { createMemoryQueue, type MemoryQueueOptions } from "./memory-queue.ts";
export { createRedisQueue, type RedisQueueOptions } from "./redis-queue.ts";
export { BACKENDS, JOB_ID_PATTERN, newJobId, postgresUrl, publicJob, type BackendName, type Connection, type Credentials, type JobPatch, type JobStatus, type ProvisionJob } from "./job.ts";
export { createMemoryJobStore, type JobPage, type JobStore, type MemoryJobStoreOptions, type Transition } from "./job-store.ts";
export { createRedisJobStore, type RedisJobStoreOptions } from "./redis-job-store.ts";
export { ProvisionWorker, type ProvisionMessage, type ProvisionWorkerOptions } from "./worker.ts";
export { ProvisionService, type CreateJobInput, type ProvisionServiceOptions } from "./service.ts";
export { provisionRoutes } from "./routes.ts";
export { createProvisioning, PROVISION_RETRY, type Provisioning, type ProvisioningOptions } from "./provisioning.ts";
export {
  canLogin,
  containerName,
  createDockerBackend,
  createSharedBackend,
  DATABASE_LABELS,
  sharedDatabaseName,
  sharedRoleName,
  type CreateContext,
  type DatabaseBackend,
  type JobRef,
} from "./backends/index.ts";
