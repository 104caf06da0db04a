/**
 * The process driver's memory limits: where the memory controller is (from faked
 * /proc/self/cgroup and /proc/mounts), the resident-memory watch's decisions (a faked
 * reader), and, as root, real cgroups: the kernel's OOM kill is told apart from a plain
 * SIGKILL, and cgroups an earlier run left are removed with what still ran in them.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync, rmdirSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createConsola } from "consola";
import { isCI } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { createMemoryLimiter, findMemoryHierarchy, residentMb, RssWatch, type MemoryLimiter } from "./_memory-limit.ts";

const quiet = createConsola({ level: -999 });
const root = process.getuid?.() === 0;

describe("where the memory controller is", () => {
  const hybrid = {
    self: "9:name=systemd:/\n4:memory:/user.slice\n1:cpu:/\n0::/\n",
    mounts: [
      "tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0",
      "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0",
      "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0",
      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0",
    ].join("\n"),
  };
  const unified = { self: "0::/system.slice/forge.service\n", mounts: "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n" };

  test("v1 when a v1 hierarchy has it (hybrid: the unified one is not asked)", () => {
    const asked: string[] = [];
    expect(findMemoryHierarchy(hybrid.self, hybrid.mounts, (m) => (asked.push(m), "memory pids"))).toEqual({ version: 1, mount: "/sys/fs/cgroup/memory" });
    expect(asked).toEqual([]);
  });

  test("v2 when only the unified hierarchy exists and its root offers memory; none when it does not", () => {
    expect(findMemoryHierarchy(unified.self, unified.mounts, () => "cpuset cpu io memory pids")).toEqual({ version: 2, mount: "/sys/fs/cgroup" });
    expect(findMemoryHierarchy(unified.self, unified.mounts, () => "cpu pids")).toBeUndefined();
    expect(findMemoryHierarchy(unified.self, unified.mounts, () => undefined)).toBeUndefined();
  });

  test("none without a cgroup file system; a mount point with a space is unescaped", () => {
    expect(findMemoryHierarchy("", "proc /proc proc rw 0 0\n", () => "memory")).toBeUndefined();
    expect(findMemoryHierarchy("4:memory:/\n", "cgroup /cg\\040mem cgroup rw,memory 0 0\n", () => undefined)).toEqual({ version: 1, mount: "/cg mem" });
  });

  test('"cgroup" without a memory hierarchy refuses to start, saying what to do; "auto" watches resident memory instead', () => {
    const proc = { selfCgroup: unified.self, mounts: "proc /proc proc rw 0 0\n" };
    const base = { owner: "0000000000000000", root: true, onOver: () => {}, logger: quiet, proc };
    const err = (() => {
      try {
        createMemoryLimiter({ ...base, mode: "cgroup" });
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ForgeError);
    expect((err as ForgeError).code).toBe(ErrorCode.DriverUnavailable);
    expect((err as ForgeError).hint).toContain("root");
    expect(createMemoryLimiter({ ...base, mode: "auto" }).kind).toBe("rss watch");
    // Not root: no cgroup is even tried.
    expect(createMemoryLimiter({ ...base, mode: "auto", root: false, proc: undefined }).kind).toBe("rss watch");
    expect(createMemoryLimiter({ ...base, mode: "off" }).kind).toBe("off");
  });
});

describe("the resident-memory watch", () => {
  function watch(used: Map<number, number>) {
    const over: [string, number, number][] = [];
    const w = new RssWatch((id, usedMb, limitMb) => over.push([id, usedMb, limitMb]), 60_000, (pid) => used.get(pid));
    return { w, over };
  }

  test("reports an instance over its limit once, and leaves the others alone", async () => {
    const used = new Map([
      [1, 40],
      [2, 70],
    ]);
    const { w, over } = watch(used);
    await w.prepare("a", 64);
    await w.prepare("b", 64);
    w.enter("a", 1);
    w.enter("b", 2);
    w.check();
    w.check();
    expect(over).toEqual([["b", 70, 64]]);
    used.set(1, 65);
    w.check();
    expect(over).toEqual([
      ["b", 70, 64],
      ["a", 65, 64],
    ]);
    await w.dispose();
  });

  test("follows a changed limit, skips instances not spawned yet or gone, and forgets released ones", async () => {
    const used = new Map([[1, 100]]);
    const { w, over } = watch(used);
    await w.prepare("cell", 128);
    w.check(); // prepared, no pid yet
    w.enter("cell", 1);
    w.check();
    expect(over).toEqual([]);
    await w.setLimit("cell", 64); // specialized for a function of 64 MiB
    await w.prepare("gone", 16);
    w.enter("gone", 2); // no such process: read gives undefined
    await w.prepare("released", 16);
    w.enter("released", 1);
    await w.release("released");
    w.check();
    expect(over).toEqual([["cell", 100, 64]]);
    await w.dispose();
  });

  test("reads a live process's own memory, and nothing of one that is gone", () => {
    const mb = residentMb(process.pid);
    expect(mb).toBeGreaterThan(1);
    expect(mb).toBeLessThan(4096);
    expect(residentMb(2 ** 22 + 12345)).toBeUndefined();
  });
});

describe.skipIf(!root && !isCI())("memory cgroups (as root)", () => {
  const owner = () => crypto.randomUUID().replaceAll("-", "").slice(0, 16);

  function cgroupLimiter(id = owner()): MemoryLimiter & { owner: string } {
    const limiter = createMemoryLimiter({ mode: "cgroup", owner: id, root: true, onOver: () => {}, logger: quiet });
    return Object.assign(limiter, { owner: id });
  }

  /** Where this machine's memory hierarchy is mounted. */
  function hierarchy(): { version: 1 | 2; mount: string } {
    const found = findMemoryHierarchy(readFileSync("/proc/self/cgroup", "utf8"), readFileSync("/proc/mounts", "utf8"), (m) => {
      try {
        return readFileSync(join(m, "cgroup.controllers"), "utf8");
      } catch {
        return undefined;
      }
    });
    if (!found) throw new Error("no memory hierarchy");
    return found;
  }

  /** The cgroup path of a process in the memory hierarchy (v1 line, or v2's). */
  function cgroupOf(pid: number): string {
    const lines = readFileSync(`/proc/${pid}/cgroup`, "utf8").split("\n");
    const line = lines.find((l) => l.split(":")[1]?.split(",").includes("memory")) ?? lines.find((l) => l.startsWith("0::")) ?? "";
    return line.slice(line.indexOf(":", line.indexOf(":") + 1) + 1);
  }

  test("a process over its limit is killed by the kernel and told apart from one killed by a plain SIGKILL", async () => {
    expect(root).toBe(true); // under CI: the cgroup file system must be writable by root
    const limiter = cgroupLimiter();
    try {
      expect(limiter.kind).toMatch(/^cgroup v[12]$/);
      await limiter.prepare("hog", 32);
      const hog = Bun.spawn([process.execPath, "-e", "const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1));"], { stdout: "ignore", stderr: "ignore" });
      limiter.enter("hog", hog.pid);
      await hog.exited;
      expect(hog.signalCode).toBe("SIGKILL");
      expect(limiter.oomKilled("hog")).toBe(true);

      await limiter.prepare("calm", 256);
      const calm = Bun.spawn([process.execPath, "-e", "setInterval(() => {}, 1000)"], { stdout: "ignore", stderr: "ignore" });
      limiter.enter("calm", calm.pid);
      expect(cgroupOf(calm.pid)).toBe(`/forge/${limiter.owner}/calm`);
      calm.kill("SIGKILL");
      await calm.exited;
      expect(limiter.oomKilled("calm")).toBe(false);
      await limiter.release("hog");
      await limiter.release("calm");
    } finally {
      await limiter.dispose();
    }
  });

  test("release kills what the function left running in its cgroup; a new start of the data dir removes what an earlier run left", async () => {
    const first = cgroupLimiter();
    await first.prepare("left", 64);
    const stray = Bun.spawn([process.execPath, "-e", "setInterval(() => {}, 1000)"], { stdout: "ignore", stderr: "ignore" });
    first.enter("left", stray.pid);
    // forge is gone (no dispose): the next start of the same data dir finds "left".
    const again = cgroupLimiter(first.owner);
    await again.dispose();
    await stray.exited;
    expect(stray.signalCode).toBe("SIGKILL");
    expect(existsSync(join(hierarchy().mount, "forge", first.owner, "left"))).toBe(false);

    const limiter = cgroupLimiter();
    await limiter.prepare("kept", 64);
    const child = Bun.spawn([process.execPath, "-e", "setInterval(() => {}, 1000)"], { stdout: "ignore", stderr: "ignore" });
    limiter.enter("kept", child.pid);
    await limiter.release("kept");
    await child.exited;
    expect(child.signalCode).toBe("SIGKILL");
    await limiter.dispose();
  });

  test("a start removes the empty cgroups other data dirs' forges left over a minute ago, never a recent one or one a process is in", async () => {
    const forgeDir = join(hierarchy().mount, "forge");
    const [killed, busy, fresh] = [owner(), owner(), owner()];
    const old = new Date(Date.now() - 10 * 60_000);
    for (const o of [killed, busy, fresh]) mkdirSync(join(forgeDir, o, "i1"), { recursive: true });
    for (const cg of [join(forgeDir, killed), join(forgeDir, killed, "i1"), join(forgeDir, busy), join(forgeDir, busy, "i1")]) utimesSync(cg, old, old);
    const running = Bun.spawn([process.execPath, "-e", "setInterval(() => {}, 1000)"], { stdout: "ignore", stderr: "ignore" });
    writeFileSync(join(forgeDir, busy, "i1", "cgroup.procs"), String(running.pid));
    try {
      const limiter = cgroupLimiter();
      await limiter.dispose(); // waits for the sweep
      expect(existsSync(join(forgeDir, killed))).toBe(false);
      expect(existsSync(join(forgeDir, busy, "i1"))).toBe(true);
      expect(existsSync(join(forgeDir, fresh, "i1"))).toBe(true);
    } finally {
      running.kill("SIGKILL");
      await running.exited;
      for (const o of [busy, fresh]) {
        rmdirSync(join(forgeDir, o, "i1"));
        rmdirSync(join(forgeDir, o));
      }
    }
  });

  test("a limit lowered and raised is written in the order the kernel takes (v1: memory + swap never below memory)", async () => {
    const limiter = cgroupLimiter();
    const { version, mount } = hierarchy();
    const limitOf = () => readFileSync(join(mount, "forge", limiter.owner, "cell", version === 1 ? "memory.limit_in_bytes" : "memory.max"), "utf8").trim();
    try {
      await limiter.prepare("cell", 128);
      expect(limitOf()).toBe(String(128 * 1024 * 1024));
      for (const mb of [64, 256, 96]) {
        await limiter.setLimit("cell", mb);
        expect(limitOf()).toBe(String(mb * 1024 * 1024));
      }
      await limiter.release("cell");
    } finally {
      await limiter.dispose();
    }
    expect(existsSync(join(mount, "forge", limiter.owner))).toBe(false);
  });
});
