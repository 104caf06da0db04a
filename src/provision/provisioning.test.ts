/** Start-up of the provisioner from settings: bad combinations stop it with a message naming the setting. */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { loadConfig } from "../config.ts";
import { isForgeError } from "../errors.ts";
import { createProvisioning } from "./provisioning.ts";

const logger = createConsola({ level: -999 });

async function startError(env: Record<string, string>): Promise<{ status: number; message: string; hint: string | undefined }> {
  const dir = mkdtempSync(join(tmpdir(), "forge-prov-"));
  try {
    const err = await createProvisioning(loadConfig({ FORGE_DATA_DIR: dir, ...env }), { logger }).then(
      async (p) => {
        await p.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    if (!isForgeError(err)) throw new Error(`expected a ForgeError, got ${String(err)}`);
    return { status: err.status, message: err.message, hint: err.hint };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("the shared backend as default without FORGE_PG_ADMIN_URL is refused", async () => {
  const e = await startError({ FORGE_PROVISION_BACKEND: "shared" });
  expect(e.status).toBe(400);
  expect(e.message).toContain("FORGE_PG_ADMIN_URL");
  expect(e.hint).toBeTruthy();
});

test("an unreachable FORGE_REDIS_URL is refused with a hint", async () => {
  const e = await startError({ FORGE_REDIS_URL: "redis://127.0.0.1:1" });
  expect(e.status).toBe(503);
  expect(e.message).toContain("FORGE_REDIS_URL");
  expect(e.hint).toContain("unset it");
});

test("without Redis, jobs a restart interrupted are queued again", async () => {
  const dir = mkdtempSync(join(tmpdir(), "forge-prov-"));
  try {
    const config = loadConfig({ FORGE_DATA_DIR: dir, FORGE_PROVISION_CONCURRENCY: "0" });
    const first = await createProvisioning(config, { logger, backends: {} });
    await first.store.create({ id: "0000000000000001", service_name: "a", resource: "postgres", backend: "docker", status: "provisioning", created_at: "", updated_at: "", attempts: 1 });
    await first.store.create({ id: "0000000000000002", service_name: "b", resource: "postgres", backend: "docker", status: "deleting", created_at: "", updated_at: "", attempts: 1 });
    await first.store.create({ id: "0000000000000003", service_name: "c", resource: "postgres", backend: "docker", status: "ready", created_at: "", updated_at: "", attempts: 1 });
    await first.close();
    const second = await createProvisioning(config, { logger, backends: {} });
    expect(await second.queue.depth()).toBe(2);
    await second.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
