/** The metadata store: functions, versions, invocations and schedules over SQLite. */
export { encodeRecordLine, openStore } from "./sqlite-store.ts";
export type * from "./types.ts";
export { API_KEY_FILE, loadOrCreateApiKey, readSavedApiKey } from "./api-key.ts";
