/** Database backends of the provisioner. */
export { canLogin, databaseName, waitForLogin, type CreateContext, type DatabaseBackend, type JobRef, type WaitOptions } from "./backend.ts";
export { containerName, createDockerBackend, DATABASE_LABELS, type DockerBackendOptions } from "./docker.ts";
export { createSharedBackend, sharedDatabaseName, sharedRoleName, type SharedBackendOptions } from "./shared.ts";
