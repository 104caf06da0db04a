/**
 * Native addons: a package holding `*.node` files cannot go into a bundle (the addon is a
 * shared library loaded by path at run time, often through node-gyp-build's dynamic
 * lookup of prebuilds/). Such packages stay external to the bundle and ship as folders in
 * the artifact's node_modules, with the packages they depend on, so the bundle at the
 * folder's root imports them from `<root>/node_modules` in the instance.
 */
import { existsSync, statSync } from "node:fs";
import { readdir, realpath } from "node:fs/promises";
import { join, relative, sep } from "node:path";

/**
 * Names of the packages in `<dir>/node_modules` (scoped ones too) that hold a `*.node`
 * file anywhere below them, sorted. None when there is no node_modules. A package that is
 * a link (pnpm's `node_modules/foo -> .pnpm/foo@1.0.0/node_modules/foo`) counts when its
 * target lies inside the folder.
 */
export async function nativePackages(dir: string): Promise<string[]> {
  const root = await realpath(dir).catch(() => dir);
  const found: string[] = [];
  for (const { name, real } of await packageFolders(root, join(root, "node_modules"))) {
    const glob = new Bun.Glob("**/*.node");
    // the package's own nested node_modules hold other packages: each is judged on its own
    for (const file of glob.scanSync({ cwd: real, onlyFiles: true, followSymlinks: false })) {
      if (!file.split("/").includes("node_modules")) {
        found.push(name);
        break;
      }
    }
  }
  return found.sort();
}

/** A package folder to ship, as packageClosure places it. */
export interface PackageFolder {
  /** Where it lies in the artifact, relative to the function folder, with `/`. */
  path: string;
  /**
   * Where its files are, relative to the function folder, with `/`: the real folder, which
   * differs from `path` when the package was reached through a link (pnpm).
   */
  from: string;
}

/**
 * The folders to ship for `names`: each package's folder in node_modules and, by its
 * package.json dependencies (optional ones when installed), the folders of what it depends
 * on, resolved as Node would: from the package's real folder (its own nested node_modules
 * first, then the ones above it, never above `dir`). Packages not installed, and links
 * leaving the folder, are skipped.
 *
 * The artifact holds no links, so a dependency found where Node would not look from the
 * package's place in the artifact (pnpm keeps it beside the package's real folder, in
 * `.pnpm/foo@1.0.0/node_modules/dep`) is placed in the package's own node_modules
 * (`node_modules/foo/node_modules/dep`). In an npm or yarn layout every `path` is its `from`.
 */
export async function packageClosure(dir: string, names: string[]): Promise<PackageFolder[]> {
  const root = await realpath(dir).catch(() => dir);
  const placed = new Map<string, string>(); // path in the artifact -> real folder
  const queue: { name: string; path: string; real: string }[] = names.map((name) => ({ name, path: "", real: root }));
  while (queue.length > 0) {
    const next = queue.shift();
    if (next === undefined) break;
    const found = resolvePackage(root, next.real, next.name);
    if (found === undefined) continue;
    const real = await realpath(found).catch(() => undefined);
    if (real === undefined || !isInside(root, real)) continue;
    // 1. already where Node looks from the dependent: the nearest one it would find
    const nearest = lookupFolders(next.path)
      .map((folder) => `${folder}/${next.name}`)
      .find((path) => placed.has(path));
    if (nearest !== undefined && placed.get(nearest) === real) continue;
    // 2. else where it is, when Node finds it there from the dependent's place; else nested in it
    const at = toSlash(relative(root, found));
    const reachable = nearest === undefined && lookupFolders(next.path).includes(parentFolder(at, next.name));
    const path = reachable ? at : `${next.path === "" ? "" : `${next.path}/`}node_modules/${next.name}`;
    if (placed.has(path)) continue;
    placed.set(path, real);
    const manifest = await readManifest(real);
    const deps = { ...manifest.dependencies, ...manifest.optionalDependencies };
    for (const dep of Object.keys(deps)) queue.push({ name: dep, path, real });
  }
  return [...placed]
    .map(([path, real]) => ({ path, from: toSlash(relative(root, real)) }))
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
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

/** The packages of a node_modules folder: name and real folder (links followed when they stay inside `root`). */
async function packageFolders(root: string, modules: string): Promise<{ name: string; real: string }[]> {
  const out: { name: string; real: string }[] = [];
  const add = async (name: string, path: string): Promise<void> => {
    const real = await realpath(path).catch(() => undefined);
    if (real !== undefined && isInside(root, real) && statSync(real).isDirectory()) out.push({ name, real });
  };
  for (const entry of await readdir(modules, { withFileTypes: true }).catch(() => [])) {
    if (entry.name.startsWith(".") || !(entry.isDirectory() || entry.isSymbolicLink())) continue; // .bin, .pnpm, .cache
    if (!entry.name.startsWith("@")) {
      await add(entry.name, join(modules, entry.name));
      continue;
    }
    for (const scoped of await readdir(join(modules, entry.name), { withFileTypes: true }).catch(() => [])) {
      if (scoped.isDirectory() || scoped.isSymbolicLink()) await add(`${entry.name}/${scoped.name}`, join(modules, entry.name, scoped.name));
    }
  }
  return out;
}

/** Node's lookup: node_modules of `from` and of each folder above it, never above `root`. */
function resolvePackage(root: string, from: string, name: string): string | undefined {
  if (!PACKAGE_NAME.test(name)) return undefined;
  for (let at = from; ; ) {
    const candidate = join(at, "node_modules", name);
    if (existsSync(join(candidate, "package.json")) && statSync(candidate).isDirectory()) return candidate;
    if (at === root || !at.startsWith(root + sep)) return undefined;
    // from <root>/node_modules/a/node_modules/b up to <root>/node_modules/a, then <root>
    const parent = at.slice(0, at.lastIndexOf(sep));
    at = parent.endsWith(`${sep}node_modules`) ? parent.slice(0, -`${sep}node_modules`.length) : parent;
    if (at.length < root.length) return undefined;
  }
}

/** The node_modules folders Node looks in from the package at `path` (relative, `/`), nearest first. */
function lookupFolders(path: string): string[] {
  const folders: string[] = [];
  for (let at = path; ; ) {
    folders.push(at === "" ? "node_modules" : `${at}/node_modules`);
    if (at === "") return folders;
    const parent = at.includes("/") ? at.slice(0, at.lastIndexOf("/")) : "";
    at = parent === "node_modules" ? "" : parent.endsWith("/node_modules") ? parent.slice(0, -"/node_modules".length) : parent;
  }
}

/** `a/node_modules` of `a/node_modules/@s/x` for the package `@s/x`. */
function parentFolder(path: string, name: string): string {
  return path.slice(0, path.length - name.length - 1);
}

function toSlash(path: string): string {
  return path.split(sep).join("/");
}

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}

async function readManifest(folder: string): Promise<Manifest> {
  try {
    const raw = (await Bun.file(join(folder, "package.json")).json()) as unknown;
    return raw !== null && typeof raw === "object" ? (raw as Manifest) : {};
  } catch {
    return {};
  }
}
