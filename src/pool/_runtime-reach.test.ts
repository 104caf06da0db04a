/**
 * Making what instances run reachable by their own uids: what counts as reachable, and
 * where copies go (hard links when the file's mode allows) for each place the data dir may be.
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createConsola, type LogObject } from "consola";
import { tempDir } from "../../test/_helpers.ts";
import { reachableByOthers, RuntimeCopies } from "./_runtime-reach.ts";

const quiet = createConsola({ level: -999 });
const root = process.getuid?.() === 0;

/** `<base>/<dirs...>/<name>` with `content` and `mode`, the folders made with `dirMode`. */
function fileIn(base: string, dirs: string[], name: string, mode: number, dirMode = 0o755): string {
  let dir = base;
  for (const d of dirs) {
    dir = join(dir, d);
    mkdirSync(dir);
    chmodSync(dir, dirMode);
  }
  const path = join(dir, name);
  writeFileSync(path, `contents of ${name}`);
  chmodSync(path, mode);
  return path;
}

function owner(): string {
  return crypto.randomUUID().replaceAll("-", "").slice(0, 16);
}

describe("reachable by others", () => {
  test("needs x on every folder above and r (a script) or x (a binary) on the file", () => {
    using base = tempDir("forge-reach-");
    chmodSync(base, 0o755);
    const script = fileIn(base, ["open"], "shim.ts", 0o644);
    expect(reachableByOthers(script, "read")).toBe(true);
    expect(reachableByOthers(script, "exec")).toBe(false);
    const closed = fileIn(base, ["home"], "bun", 0o755, 0o700);
    expect(reachableByOthers(closed, "exec")).toBe(false);
    // A link in an open folder to a file in a closed one: the kernel follows it into the closed folder.
    symlinkSync(closed, join(base, "open", "bun-link"));
    expect(reachableByOthers(join(base, "open", "bun-link"), "exec")).toBe(false);
    expect(reachableByOthers(join(base, "open", "missing"), "read")).toBe(false);
  });
});

describe("runtime copies", () => {
  test("a file others reach is used where it is; nothing is made", async () => {
    using base = tempDir("forge-reach-");
    chmodSync(base, 0o755);
    const shim = fileIn(base, ["checkout"], "shim.ts", 0o644);
    const copies = new RuntimeCopies({ dataDir: join(base, "data"), owner: owner(), logger: quiet });
    expect(await copies.reach(shim, "read")).toBe(shim);
    expect(existsSync(join(base, "data"))).toBe(false);
    await copies.dispose();
  });

  test("a checkout in a closed folder: hard links in <dataDir>/runtime when the files' modes allow, copies made readable when not", async () => {
    using base = tempDir("forge-reach-");
    chmodSync(base, 0o755);
    const dataDir = join(base, "data");
    mkdirSync(dataDir, { mode: 0o700 });
    const bun = fileIn(base, ["home", "forge"], "bun.exe", 0o755, 0o700);
    const shim = join(dirname(bun), "shim.ts");
    writeFileSync(shim, "the shim");
    chmodSync(shim, 0o600); // not even readable by others: a copy, not a link
    const copies = new RuntimeCopies({ dataDir, owner: owner(), logger: quiet });
    const [bunCopy, shimCopy] = await Promise.all([copies.reach(bun, "exec"), copies.reach(shim, "read")]);
    expect(bunCopy).toBe(join(dataDir, "runtime", "bun.exe"));
    expect(statSync(bunCopy).ino).toBe(statSync(bun).ino);
    expect(shimCopy).toBe(join(dataDir, "runtime", "shim.ts"));
    expect(statSync(shimCopy).ino).not.toBe(statSync(shim).ino);
    expect(readFileSync(shimCopy, "utf8")).toBe("the shim");
    expect(reachableByOthers(bunCopy, "exec")).toBe(true);
    expect(reachableByOthers(shimCopy, "read")).toBe(true);
    expect(statSync(dataDir).mode & 0o777).toBe(0o711); // passable, not listable
    // Asked again: the same copy, not a second one.
    expect(await copies.reach(bun, "exec")).toBe(bunCopy);
    await copies.dispose();
    expect(existsSync(bunCopy)).toBe(true); // the data dir's: kept
  });

  test("a data dir in a closed folder too: the copies go to a system folder of this run, removed on dispose", async () => {
    using base = tempDir("forge-reach-");
    chmodSync(base, 0o755);
    const bun = fileIn(base, ["home", "forge"], "bun.exe", 0o755, 0o700);
    const dataDir = join(dirname(bun), ".forge");
    const system = join(base, "var-lib-forge");
    const id = owner();
    const copies = new RuntimeCopies({ dataDir, owner: id, logger: quiet, systemDir: system });
    const copy = await copies.reach(bun, "exec");
    expect(copy).toBe(join(system, `runtime-${id}`, "bun.exe"));
    expect(reachableByOthers(copy, "exec")).toBe(true);
    await copies.dispose();
    expect(existsSync(join(system, `runtime-${id}`))).toBe(false);
  });

  test("with no system folder either: the temp dir, never a folder there that another user made first", async () => {
    using base = tempDir("forge-reach-");
    chmodSync(base, 0o755);
    const bun = fileIn(base, ["home", "forge"], "bun.exe", 0o755, 0o700);
    const dataDir = join(dirname(bun), ".forge");
    const closedSystem = join(dirname(bun), "lib", "forge");
    const id = owner();
    const copies = new RuntimeCopies({ dataDir, owner: id, logger: quiet, systemDir: closedSystem });
    const copy = await copies.reach(bun, "exec");
    expect(copy).toBe(join(tmpdir(), `forge-runtime-${id}`, "bun.exe"));
    await copies.dispose();
    expect(existsSync(dirname(copy))).toBe(false);

    if (!root) return;
    // Planted by another user before forge started: not used.
    const planted = join(tmpdir(), `forge-runtime-${id}`);
    mkdirSync(planted, { mode: 0o755 });
    chownSync(planted, 4242, 4242);
    try {
      const wary = new RuntimeCopies({ dataDir, owner: id, logger: quiet, systemDir: closedSystem });
      const elsewhere = await wary.reach(bun, "exec");
      expect(dirname(elsewhere)).not.toBe(planted);
      expect(reachableByOthers(elsewhere, "exec")).toBe(true);
      await wary.dispose();
      expect(existsSync(dirname(elsewhere))).toBe(false);
    } finally {
      chownSync(planted, 0, 0);
      rmSync(planted, { recursive: true, force: true });
    }
  });

  test("what cannot be copied is used where it is, with a warning saying what to do", async () => {
    using base = tempDir("forge-reach-");
    chmodSync(base, 0o755);
    const logs: LogObject[] = [];
    const logger = createConsola({ reporters: [{ log: (entry) => void logs.push(entry) }] });
    const gone = join(base, "home", "forge", "bun.exe"); // no such file
    const copies = new RuntimeCopies({ dataDir: join(base, "data"), owner: owner(), logger });
    expect(await copies.reach(gone, "exec")).toBe(gone);
    const warning = logs.find((l) => l.type === "warn");
    expect(String(warning?.args[0])).toContain(`cannot reach ${gone}`);
    expect(String(warning?.args[2])).toContain("chmod o+x");
    await copies.dispose();
  });
});
