/**
 * The process driver works wherever forge is installed (issue 14): a checkout in root's home
 * folder (mode 0700, the usual setup on a VM or in a container) started as root, where each
 * instance runs as a uid of its own that cannot enter the checkout, nor reach the bun binary
 * in its node_modules or the shim in runtimes/.
 */
import { describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { isCI } from "../src/config.ts";
import { cli, ROOT, startForge, tempDir } from "./_helpers.ts";

const root = process.getuid?.() === 0;

/**
 * A copy of this checkout's files (tracked and new, as they are in the working tree) at
 * `<dir>/forge`, its node_modules entries linked to this one's, except bun: its binary is a
 * file of the copy (a hard link), so that nothing instances need sits outside the closed folder.
 */
function copyCheckout(dir: string): string {
  const dest = join(dir, "forge");
  const listed = Bun.spawnSync(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], { cwd: ROOT });
  if (listed.exitCode !== 0) throw new Error(`git ls-files failed: ${listed.stderr.toString()}`);
  for (const file of listed.stdout.toString().split("\0")) {
    if (!file || !existsSync(join(ROOT, file))) continue;
    mkdirSync(dirname(join(dest, file)), { recursive: true });
    copyFileSync(join(ROOT, file), join(dest, file));
  }
  const modules = join(dest, "node_modules");
  mkdirSync(join(modules, "bun/bin"), { recursive: true });
  for (const entry of readdirSync(join(ROOT, "node_modules"))) {
    if (entry !== "bun" && entry !== ".bin") symlinkSync(join(ROOT, "node_modules", entry), join(modules, entry));
  }
  const bun = join(ROOT, "node_modules/bun/bin/bun.exe");
  try {
    linkSync(bun, join(modules, "bun/bin/bun.exe"));
  } catch {
    copyFileSync(bun, join(modules, "bun/bin/bun.exe"));
    chmodSync(join(modules, "bun/bin/bun.exe"), 0o755);
  }
  return dest;
}

describe.skipIf(!root && !isCI())("forge in a folder others cannot enter (process driver, as root)", () => {
  test("forge cloned into a folder of mode 0700 and started as root deploys examples/hello (on bun and on node), and it answers", async () => {
    expect(root).toBe(true); // under CI the test runs as root: isolation by uid is what it is about
    using home = tempDir("forge-home-");
    chmodSync(home, 0o700);
    const checkout = copyCheckout(home);
    // The data dir of `npm start`: ./.forge in the checkout, inside the closed folder too.
    await using forge = await startForge({ root: checkout, dataDir: join(checkout, ".forge") });
    const deployed = await cli(forge, ["deploy", join(ROOT, "examples/hello")]);
    expect(deployed.stderr).toBe("");
    expect(deployed.code).toBe(0);
    const r = await forge.fn("hello", "/?name=World");
    expect(await r.json()).toEqual({ message: "Hello, World!" });
    expect(r.status).toBe(200);

    // Runtime "node": its shim is built into the (closed) data dir on first use, and reached the same way.
    if (!Bun.which("node") && !isCI()) return;
    const onNode = await cli(forge, ["deploy", join(ROOT, "examples/hello"), "--name", "hello-node", "--runtime", "node"]);
    expect(onNode.stderr).toBe("");
    expect(onNode.code).toBe(0);
    expect(await (await forge.fn("hello-node", "/?name=Node")).json()).toEqual({ message: "Hello, Node!" });
  });
});
