/** The store contract (store.case.ts) on SQLite, through asyncStore, one fresh file per test. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { asyncStore } from "./async-sqlite.ts";
import { openStore } from "./sqlite-store.ts";
import { storeContract } from "./store.case.ts";

storeContract("sqlite", async () => {
  const dir = mkdtempSync(join(tmpdir(), "forge-store-contract-"));
  const store = asyncStore(openStore(join(dir, "forge.db")));
  return {
    store,
    async close() {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
