/**
 * Density (issue 17) on a real driver: with a 1 GiB budget and functions declaring 128 MiB,
 * more than 8 idle functions stay warm (the budget counts measured resident memory plus a
 * headroom, not the declared limits), and an instance allocating towards its limit makes the
 * least recently used idle ones be evicted: what the budget counts never passes it, and
 * neither does what is resident.
 */
import { expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

/** Idle unless asked: /grow?mb=N holds N MiB more (1 MiB filled buffers, a little at a time). */
const ALLOCATOR = `
const held = [];
export default {
  async fetch(req) {
    const mb = Number(new URL(req.url).searchParams.get("mb") ?? 0);
    for (let i = 0; i < mb; i++) {
      held.push(Buffer.alloc(1024 * 1024, 1));
      if (i % 16 === 15) await new Promise((r) => setTimeout(r, 5));
    }
    return Response.json({ heldMb: held.length });
  },
};
`;

interface Memory {
  budgetMb: number;
  countedMb: number;
  declaredMb: number;
  residentMb?: number;
}
interface Info {
  memory: Memory;
  pool: { instances: { state: string; residentMb?: number; countedMb: number; memoryMb: number }[] } | null;
}

export function densityContract(options: { driver: "process" | "docker" }): void {
  test(`${options.driver}: 12 idle functions of 128 MiB stay warm in 1 GiB; one growing to 870 MiB evicts the least recently used`, async () => {
    using dir = tempDir("forge-density-");
    writeFileSync(join(dir, "index.js"), ALLOCATOR);
    await using forge = await startForge({
      env: { FORGE_DRIVER: options.driver, FORGE_MEMORY_BUDGET_MB: "1024", FORGE_MEMORY_SAMPLE: "100ms", FORGE_STEM_CELLS: "bun=1" },
    });
    const info = async (name: string): Promise<Info> => (await (await forge.api(`/v1/functions/${name}`)).json()) as Info;
    const live = async (name: string): Promise<number> => (await info(name)).pool?.instances.filter((i) => i.state !== "stopping").length ?? 0;
    const deploy = async (name: string, memory: number): Promise<void> => {
      const d = await cli(forge, ["deploy", dir, "--name", name, "--memory", String(memory)]);
      if (d.code !== 0) throw new Error(`deploy ${name} failed:\n${d.stdout}${d.stderr}\n${forge.output().slice(-3000)}`);
    };

    // The one that will grow first (minWarm 1 would also keep it; being the most recently used does).
    await deploy("hog", 900);
    const names = Array.from({ length: 12 }, (_, i) => `idle-${String(i).padStart(2, "0")}`);
    for (const name of names) await deploy(name, 128);

    // Every instance measured: 12 x 128 MiB declared (more than the budget), all still warm.
    await until(async () => (await Promise.all(names.map(info))).every((i) => i.pool?.instances.some((x) => x.residentMb !== undefined)), 20_000, "every instance measured");
    for (const name of names) expect(await live(name)).toBe(1);
    const filled = (await info("hog")).memory;
    expect(filled.declaredMb).toBeGreaterThanOrEqual(12 * 128 + 900);
    expect(filled.countedMb).toBeLessThanOrEqual(1024);
    expect(filled.residentMb ?? Infinity).toBeLessThan(filled.countedMb);

    // The hog holds 850 MiB more, the most recently used: counted at ~870 of its 900, so the
    // least recently used idle ones make room. Watched meanwhile: neither what the budget
    // counts nor what is resident ever passes 1024 MiB.
    let watching = true;
    let maxCounted = 0;
    let maxResident = 0;
    const watch = (async () => {
      while (watching) {
        const m = (await info("hog")).memory;
        maxCounted = Math.max(maxCounted, m.countedMb);
        maxResident = Math.max(maxResident, m.residentMb ?? 0);
      }
    })();
    try {
      const r = await forge.fn("hog", "/grow?mb=850");
      expect(r.status).toBe(200);
      expect(await r.json()).toEqual({ heldMb: 850 });
      await until(async () => (await live(names[0] ?? "")) === 0, 10_000, "the least recently used evicted");
      await until(async () => {
        const hog = (await info("hog")).pool?.instances[0];
        return hog?.residentMb !== undefined && hog.residentMb > 800;
      }, 10_000, "the hog measured at its size");
    } finally {
      watching = false;
      await watch;
    }
    const after = await info("hog");
    expect(after.pool?.instances[0]?.countedMb).toBeGreaterThan(800);
    expect(after.memory.countedMb).toBeLessThanOrEqual(1024);
    expect(maxCounted).toBeLessThanOrEqual(1024);
    expect(maxResident).toBeLessThanOrEqual(1024);
    // Least recently used first: the oldest went, the newest stayed.
    expect(await live(names[names.length - 1] ?? "")).toBe(1);
    const warm = (await Promise.all(names.map(live))).reduce((a, b) => a + b, 0);
    expect(warm).toBeLessThan(12);
    expect(warm).toBeGreaterThan(0);
    expect(forge.output()).toContain("to stay within the memory budget");
  }, 240_000);
}
