/** The metadata store: functions, versions, invocations and schedules over SQLite. */
export { openStore } from "./sqlite-store.ts";
export { openPgStore } from "./pg-store.ts";
export { asyncStore } from "./async-sqlite.ts";
export { RecordColumns } from "./record-batch.ts";
export type * from "./types.ts";
export { API_KEY_FILE, clusterApiKey, loadOrCreateApiKey, readSavedApiKey, saveApiKey } from "./api-key.ts";
