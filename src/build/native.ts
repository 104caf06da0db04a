/**
 * Native addons: a package holding `*.node` files cannot go into a bundle (the addon is a
 * shared library loaded by path at run time, often through node-gyp-build's dynamic
 * lookup of prebuilds/). Such packages stay external to the bundle and ship as folders in
 * the artifact's node_modules, with the packages they depend on, so the bundle at the
 * folder's root imports them from `<root>/node_modules` in the instance.
 */
import { existsSync, statSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join, relative, sep } from "node:path";

/**
 * Names of the packages in `<dir>/node_modules` (scoped ones too) that hold a `*.node`
 * file anywhere below them, sorted. None when there is no node_modules.
 */
export async function nativePackages(dir: string): Promise<string[]> {
  const root = join(dir, "node_modules");
  const found: string[] = [];
  for (const name of await packageNames(root)) {
    const glob = new Bun.Glob("**/*.node");
    // the package's own nested node_modules hold other packages: each is judged on its own
    for (const file of glob.scanSync({ cwd: join(root, name), onlyFiles: true, followSymlinks: false })) {
      if (!file.split("/").includes("node_modules")) {
        found.push(name);
        break;
      }
    }
  }
  return found.sort();
}

/**
 * The folders (relative to `dir`, with `/`) to ship for `names`: each package's folder in
 * node_modules and, by its package.json dependencies (optional ones when installed), the
 * folders of what it depends on, resolved as Node would from the package (its own nested
 * node_modules first, then `<dir>/node_modules`). Packages not installed are skipped.
 */
export async function packageClosure(dir: string, names: string[]): Promise<string[]> {
  const out = new Set<string>();
  const queue: { name: string; from: string }[] = names.map((name) => ({ name, from: dir }));
  while (queue.length > 0) {
    const next = queue.shift();
    if (!next) break;
    const folder = resolvePackage(dir, next.from, next.name);
    if (folder === undefined) continue;
    const rel = relative(dir, folder).split(sep).join("/");
    if (out.has(rel)) continue;
    out.add(rel);
    const manifest = await readManifest(folder);
    const deps = { ...manifest.dependencies, ...manifest.optionalDependencies };
    for (const dep of Object.keys(deps)) queue.push({ name: dep, from: folder });
  }
  return [...out].sort();
}

/** package.json `main` of `dir`, when it names a file inside the folder. */
export async function packageMain(dir: string): Promise<string | undefined> {
  const main = (await readManifest(dir)).main;
  if (typeof main !== "string" || main === "") return undefined;
  const rel = main.replace(/^\.\//, "");
  if (rel.startsWith("/") || rel.split(/[\\/]/).includes("..")) return undefined;
  return rel;
}

// --- internal ---

interface Manifest {
  main?: unknown;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
}

const PACKAGE_NAME = /^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*$/i;

async function packageNames(root: string): Promise<string[]> {
  const names: string[] = [];
  const entries = await readdir(root, { withFileTypes: true }).catch(() => []);
  for (const entry of entries) {
    if (!entry.isDirectory() || entry.name.startsWith(".")) continue;
    if (entry.name.startsWith("@")) {
      const scoped = await readdir(join(root, entry.name), { withFileTypes: true }).catch(() => []);
      for (const s of scoped) if (s.isDirectory()) names.push(`${entry.name}/${s.name}`);
    } else {
      names.push(entry.name);
    }
  }
  return names;
}

/** Node's lookup: node_modules of `from` and of each folder above it, never above `dir`. */
function resolvePackage(dir: string, from: string, name: string): string | undefined {
  if (!PACKAGE_NAME.test(name)) return undefined;
  for (let at = from; ; ) {
    const candidate = join(at, "node_modules", name);
    if (existsSync(join(candidate, "package.json")) && statSync(candidate).isDirectory()) return candidate;
    if (at === dir || !at.startsWith(dir + sep)) return undefined;
    // from <dir>/node_modules/a/node_modules/b up to <dir>/node_modules/a, then <dir>
    const parent = at.slice(0, at.lastIndexOf(sep));
    at = parent.endsWith(`${sep}node_modules`) ? parent.slice(0, -`${sep}node_modules`.length) : parent;
    if (at.length < dir.length) return undefined;
  }
}

async function readManifest(folder: string): Promise<Manifest> {
  try {
    const raw = (await Bun.file(join(folder, "package.json")).json()) as unknown;
    return raw !== null && typeof raw === "object" ? (raw as Manifest) : {};
  } catch {
    return {};
  }
}
