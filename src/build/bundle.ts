/**
 * Bundles a function folder's entry module and its imports into one ES module file,
 * the only artifact an instance loads.
 *
 * Source uploaded to the server is untrusted, and `Bun.build` in-process is not safe
 * for it: a `with { type: "macro" }` import runs the uploader's code inside the server
 * at bundle time, and `import x from "/etc/passwd" with { type: "text" }` inlines a file
 * of the server into the bundle. Neither can be switched off through the `Bun.build`
 * API (the process flag `--no-macros` does not reach it), so untrusted source is built
 * by a `bun build --no-macros` child in an empty working folder and its metafile is
 * checked: every input must lie inside the function folder. The CLI bundles the
 * developer's own code on their own machine and passes `trusted: true`, which builds
 * in-process and may resolve packages hoisted above the folder (monorepos).
 */
import { existsSync, statSync } from "node:fs";
import { mkdir, mkdtemp, readdir, realpath, rm } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { ErrorCode, ForgeError } from "../errors.ts";
import { nativePackages, packageMain } from "./native.ts";

export interface BundleOptions {
  /** The folder is the caller's own code (the CLI): build in-process, allow inputs outside it. Default false. */
  trusted?: boolean;
  /** How long an untrusted build may take before it is killed. Default 60000. */
  timeoutMs?: number;
  /**
   * Packages left out of the bundle and imported from `<dir>/node_modules` at run time.
   * Default: the packages holding native addons (nativePackages of the folder).
   */
  external?: string[];
  /** The runtime the bundle runs on: Bun's own APIs stay as they are, Node's builtins are imported as Node has them. Default "bun". */
  target?: "bun" | "node";
}

export interface BundleResult {
  /** Size of the bundle in bytes. */
  bytes: number;
  /** sha256 of the bundle, hex. */
  digest: string;
  /** Packages left external (imported from node_modules at run time), sorted. */
  external: string[];
}

/** Entry modules tried, in order, when forge.json names none (after package.json `main`). */
export const ENTRY_CANDIDATES = ["index.ts", "index.js", "index.mjs", "index.cjs", "src/index.ts", "main.ts"] as const;

/** Extensions tried for the module part of a forge.json `handler` ("src/api.main" -> src/api.ts, ...). */
export const HANDLER_EXTENSIONS = [".ts", ".js", ".mjs", ".cjs"] as const;

/** What names the entry: forge.json's `entry` and `handler` as written (not defaulted). */
export interface EntryHints {
  entry?: string;
  /** Lambda's "file.export": the module part names the entry when `entry` is not set. */
  handler?: string;
}

/**
 * The entry module of `dir`, relative to it: `entry` if given (it must exist); else the
 * module of `handler` (with .ts, .js, .mjs or .cjs); else package.json `main` when it is a
 * file of the folder; else the first of ENTRY_CANDIDATES that exists. Throws BuildFailed
 * when there is none. A string is taken as `entry`.
 */
export async function findEntry(dir: string, hints: EntryHints | string = {}): Promise<string> {
  const { entry, handler } = typeof hints === "string" ? { entry: hints, handler: undefined } : hints;
  if (entry !== undefined) {
    if (!isFileInside(dir, entry)) throw entryMissing(entry, "entry");
    return entry;
  }
  if (handler !== undefined) {
    const module = handler.slice(0, handler.lastIndexOf("."));
    const found = HANDLER_EXTENSIONS.map((ext) => module + ext).find((candidate) => isFileInside(dir, candidate));
    if (found === undefined) throw entryMissing(`${module}.ts (or .js, .mjs, .cjs)`, "handler");
    return found;
  }
  const main = await packageMain(dir);
  if (main !== undefined && isFileInside(dir, main)) return main;
  const found = ENTRY_CANDIDATES.find((candidate) => isFileInside(dir, candidate));
  if (found === undefined) throw entryMissing("index.ts", "none");
  return found;
}

/**
 * Bundles `entry` (relative to `dir`) and what it imports into the single ES module
 * `outFile`. Throws BuildFailed (400) when the entry is missing or the code does not
 * bundle, with the first build messages in the error.
 */
export async function bundleEntry(dir: string, entry: string, outFile: string, options: BundleOptions = {}): Promise<BundleResult> {
  if (!isFileInside(dir, entry)) throw entryMissing(entry, "entry");
  await mkdir(dirname(outFile), { recursive: true });
  const external = [...(options.external ?? (await nativePackages(dir)))].sort();
  const target = options.target ?? "bun";
  const built = options.trusted
    ? await buildInProcess(dir, entry, external, target)
    : await buildInChild(dir, entry, outFile, options.timeoutMs ?? 60_000, external, target);
  const code = new TextEncoder().encode(await relocatePaths(new TextDecoder().decode(built.code), built.root, built.cwd));
  await Bun.write(outFile, code);
  return { bytes: code.byteLength, digest: new Bun.CryptoHasher("sha256").update(code).digest("hex"), external };
}

/**
 * Makes a bundle that sits at the root of a copy of `root` see that copy, not `root`:
 *
 * - Bun bakes a CommonJS module's paths into the bundle as literals
 *   (`var __dirname = "/abs/src/lib", __filename = "/abs/src/lib/x.js";`): those inside
 *   `root` become expressions of `import.meta.dirname`, the bundle's own folder.
 * - It declares them with `var` at the top level for a module it does not wrap (an ES
 *   module reading `__dirname`), so the last module's value wins for all of them (Bun 1.4:
 *   a module in lib/ read the root's __dirname): such a module's names are renamed to its own.
 * - An ES module's `import.meta.dir`, `.dirname`, `.path`, `.filename`, `.file` and `.url`
 *   are left as is and name the bundle: in a module of a subfolder they get its folder
 *   and file instead (everywhere the module's own file, as if the source ran in place).
 *
 * Modules are told apart by the `// <path>` line (relative to the build's `cwd`) Bun
 * writes above each one when not minifying; those lines become relative to `root`. Paths
 * outside `root` are left alone.
 *
 * Only code is rewritten: the text is read as JavaScript tokens (acorn's tokenizer), so
 * strings, templates, regular expressions and comments that mention `import.meta.url` or
 * `__dirname` stay as written, and so do property names (`o.__dirname`, `{ __dirname: 1 }`).
 * That read is the cost of being exact (2 CPUs, in a fresh process as `forge deploy` runs it:
 * a 1.2 MB bundle of @aws-sdk/client-dynamodb ~150 ms, which Bun.build made in ~130 ms; the
 * same four times over, 4.8 MB, ~450 ms, ~250 ms once warm). acorn is loaded on first use,
 * not with the CLI. Throws BuildFailed when the bundle does not tokenize.
 */
export async function relocatePaths(code: string, root: string, cwd: string): Promise<string> {
  const scan = scanBundle(await loadAcorn(), code);
  const edits: Edit[] = [];

  // 1. sections: the range of each module of the folder, up to the next module's line
  const sections: Section[] = [];
  let current: Section | undefined;
  for (const header of scan.headers) {
    if (current) current.end = header.start;
    current = undefined;
    const file = resolve(cwd, header.path);
    const rel = relative(root, file);
    if (rel === "" || rel.startsWith("..") || isAbsolute(rel) || !existsSync(file)) continue;
    current = { start: header.end, end: code.length, rel: rel.split(sep).join("/"), renamed: 0 };
    sections.push(current);
    // the builder's folders are nobody's business in the instance
    edits.push({ start: header.start, end: header.end, text: `// ${current.rel}` });
  }
  const sectionOf = sectionFinder(sections);

  // 2. names declared at the top level more than once clobber each other: rename them per module
  const topLevel = { __dirname: 0, __filename: 0 };
  for (const use of scan.names) if (use.topLevel) topLevel[use.name]++;
  if (topLevel.__dirname > 1 || topLevel.__filename > 1) {
    let renamed = 0;
    for (const use of scan.names) {
      const section = sectionOf(use.start);
      if (use.topLevel && section && section.renamed === 0) section.renamed = ++renamed;
    }
  }

  // 3. the edits, in order of position
  for (const meta of scan.metas) {
    const section = sectionOf(meta.start);
    if (section) edits.push({ start: meta.start, end: meta.end, text: metaExpression(meta.prop, section.rel) });
  }
  for (const use of scan.names) {
    const n = sectionOf(use.start)?.renamed ?? 0;
    if (n > 0) {
      const name = `${use.name}$forge${n}`;
      edits.push({ start: use.start, end: use.end, text: use.shorthand ? `${use.name}: ${name}` : name });
    }
    // a baked literal anywhere (a module of the folder whose line was not recognised too)
    if (use.baked) {
      const rel = relative(root, use.baked.value);
      if (!rel.startsWith("..") && !isAbsolute(rel)) {
        edits.push({ start: use.baked.start, end: use.baked.end, text: dirExpression(rel.split(sep).join("/")) });
      }
    }
  }
  edits.sort((a, b) => a.start - b.start);
  let out = "";
  let at = 0;
  for (const edit of edits) {
    out += code.slice(at, edit.start) + edit.text;
    at = edit.end;
  }
  return out + code.slice(at);
}

// --- internal ---

type Acorn = typeof import("acorn");
type TokenType = import("acorn").TokenType;
/** acorn's tokens carry their value (a name's text, a string's contents); its types leave it out. */
type Token = import("acorn").Token & { value?: unknown };

let acornModule: Promise<Acorn> | undefined;

/** acorn on first use: the CLI imports this file for every command, and only a deploy bundles. */
function loadAcorn(): Promise<Acorn> {
  acornModule ??= import("acorn");
  return acornModule;
}

interface Section {
  start: number;
  end: number;
  /** The module's path relative to the root, with `/`. */
  rel: string;
  /** n of the module's `__dirname$forge<n>`, 0 when its names are not renamed. */
  renamed: number;
}

interface Edit {
  start: number;
  end: number;
  text: string;
}

/** What relocatePaths rewrites, found in one pass over the tokens. */
interface BundleScan {
  /** `// <path>` lines above modules, with the comment's range. */
  headers: { start: number; end: number; path: string }[];
  /** `import.meta.<prop>` (a place-naming prop), the range of all five tokens. */
  metas: { start: number; end: number; prop: string }[];
  /** `__dirname` / `__filename` as variables (not property names). */
  names: NameUse[];
}

interface NameUse {
  start: number;
  end: number;
  name: "__dirname" | "__filename";
  /** `{ __dirname }` in an object: renaming it must keep the key. */
  shorthand: boolean;
  /** `__dirname = "<string>"`: the string token's range and value. */
  baked?: { start: number; end: number; value: string };
  /** A baked assignment outside every brace, bracket and parenthesis (Bun's `var` for an unwrapped module). */
  topLevel: boolean;
}

/** `import.meta.<prop>` naming the module's place (not .require, .resolve, .main, .env). */
const META_PROPS = new Set(["dirname", "dir", "filename", "file", "path", "url"]);

/** Names worth a closer look: most tokens are not one of them. */
const JUDGED: ReadonlySet<unknown> = new Set(["__dirname", "__filename", ...META_PROPS]);

/** How far back and ahead scanBundle looks around a token: `<x> import . meta . <prop>` and `<name> = "<string>"`. */
const WINDOW = 8;

function scanBundle(acorn: Acorn, code: string): BundleScan {
  const tt = acorn.tokTypes;
  const scan: BundleScan = { headers: [], metas: [], names: [] };
  // the last WINDOW tokens, with the innermost open `{`, `${`, `(` or `[` at each and how many are open
  const ring: (Token | undefined)[] = new Array(WINDOW);
  const enclosing: (TokenType | undefined)[] = new Array(WINDOW);
  const depth: number[] = new Array(WINDOW).fill(0);
  const stack: TokenType[] = [];
  const at = (i: number): Token | undefined => (i < 0 ? undefined : ring[i % WINDOW]);
  const member = (t: Token | undefined) => t !== undefined && (t.type === tt.dot || t.type === tt.questionDot);

  // a name is judged once the two tokens after it are known
  const judge = (k: number): void => {
    const tok = at(k);
    if (tok === undefined) return;
    const value: unknown = tok.value;
    const prev = at(k - 1);
    if (value === "__dirname" || value === "__filename") {
      if (member(prev)) return; // o.__dirname
      const next = at(k + 1);
      const keyPlace = prev === undefined || prev.type === tt.braceL || prev.type === tt.comma;
      if (next?.type === tt.colon && keyPlace) return; // { __dirname: x }
      const inBraces = enclosing[k % WINDOW] === tt.braceL;
      if (next?.type === tt.parenL && ((inBraces && keyPlace) || (prev?.type === tt.name && METHOD_WORDS.has(String(prev.value))))) return; // a method
      const after = at(k + 2);
      const baked =
        next?.type === tt.eq && after?.type === tt.string && typeof after.value === "string"
          ? { start: after.start, end: after.end, value: after.value }
          : undefined;
      scan.names.push({
        start: tok.start,
        end: tok.end,
        name: value,
        shorthand: inBraces && keyPlace && (next?.type === tt.comma || next?.type === tt.braceR),
        baked,
        topLevel: baked !== undefined && depth[k % WINDOW] === 0,
      });
    } else if (typeof value === "string" && META_PROPS.has(value) && prev?.type === tt.dot) {
      const meta = at(k - 2);
      const start = at(k - 4);
      if (meta?.type !== tt.name || meta.value !== "meta" || at(k - 3)?.type !== tt.dot) return;
      if (start?.type !== tt._import || member(at(k - 5))) return;
      scan.metas.push({ start: start.start, end: tok.end, prop: value });
    }
  };

  try {
    const tokens = acorn.tokenizer(code, {
      ecmaVersion: "latest",
      sourceType: "module",
      allowHashBang: true,
      allowAwaitOutsideFunction: true,
      onComment(block, text, start, end) {
        if (block || (start > 0 && code[start - 1] !== "\n")) return;
        const header = /^ (\S.*)$/.exec(text);
        if (header?.[1] === undefined || !followsBlankOrPragma(code, start)) return;
        scan.headers.push({ start, end, path: header[1] });
      },
    });
    for (let i = 0; ; i++) {
      const tok = tokens.getToken() as Token;
      const slot = i % WINDOW;
      ring[slot] = tok;
      enclosing[slot] = stack[stack.length - 1];
      depth[slot] = stack.length;
      const type = tok.type;
      if (type === tt.braceL || type === tt.dollarBraceL || type === tt.parenL || type === tt.bracketL) stack.push(type);
      else if (type === tt.braceR || type === tt.parenR || type === tt.bracketR) stack.pop();
      const candidate = i < 2 ? undefined : ring[(i - 2) % WINDOW];
      if (candidate !== undefined && candidate.type === tt.name && JUDGED.has(candidate.value)) judge(i - 2);
      // the end token is read again at each call: two of them let the last names be judged
      if (type === tt.eof && at(i - 1)?.type === tt.eof) break;
    }
  } catch (err) {
    throw new ForgeError(ErrorCode.BuildFailed, 400, `the bundle could not be read back to relocate its paths: ${err instanceof Error ? err.message : String(err)}`, {
      hint: "this is a bug in forge or in the bundler; report it with the function's source",
      cause: err,
    });
  }
  return scan;
}

/** Words before a class member's name: `get __dirname() {}`. */
const METHOD_WORDS = new Set(["get", "set", "static", "async"]);

/** A module's line follows a blank line, or the `// @bun` pragma when it is the first. */
function followsBlankOrPragma(code: string, lineStart: number): boolean {
  if (lineStart === 0) return true;
  const prevStart = code.lastIndexOf("\n", lineStart - 2) + 1;
  const prevLine = code.slice(prevStart, lineStart - 1);
  return prevLine === "" || /^\/\/ @bun\b/.test(prevLine);
}

/** The section holding a position, by binary search: sections are in order and do not overlap. */
function sectionFinder(sections: Section[]): (pos: number) => Section | undefined {
  return (pos) => {
    let lo = 0;
    let hi = sections.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = sections[mid];
      if (s === undefined) return undefined;
      if (pos < s.start) hi = mid - 1;
      else if (pos >= s.end) lo = mid + 1;
      else return s;
    }
    return undefined;
  };
}

/** The bundle's own folder plus `rel`: import.meta.dirname, which Bun and Node (20.11+) both have. */
function dirExpression(rel: string): string {
  return rel === "" ? "import.meta.dirname" : `(import.meta.dirname + ${JSON.stringify(`/${rel}`)})`;
}

function metaExpression(prop: string, rel: string): string {
  const slash = rel.lastIndexOf("/");
  const dir = slash < 0 ? "" : rel.slice(0, slash);
  switch (prop) {
    case "dir":
    case "dirname":
      return dirExpression(dir);
    case "path":
    case "filename":
      return dirExpression(rel);
    case "file":
      return JSON.stringify(rel.slice(slash + 1));
    default: // url: relative to the bundle's own URL, each segment encoded
      return `new URL(${JSON.stringify(rel.split("/").map(encodeURIComponent).join("/"))}, import.meta.url).href`;
  }
}

const MAX_MESSAGES = 5;
const DEPENDENCY_HINT = "npm install the package in the function folder and deploy with `forge deploy`, which bundles dependencies";
const CODE_HINT = "fix the lines above (run `bun build <entry>` locally to check) and deploy again";

interface BuildMessageLike {
  message: string;
  position?: { file: string; line: number; column: number } | null;
}

interface Built {
  code: Uint8Array;
  /** The folder as the bundler saw it (real path). */
  root: string;
  /** The bundler's working folder: the `// <path>` lines are relative to it. */
  cwd: string;
}

/** `pkg` and `pkg/*`: subpath imports of an external package stay external too. */
function externalPatterns(external: string[]): string[] {
  return external.flatMap((name) => [name, `${name}/*`]);
}

async function buildInProcess(dir: string, entry: string, external: string[], target: "bun" | "node"): Promise<Built> {
  const root = await realpath(dir);
  const result = await Bun.build({
    entrypoints: [join(root, entry)],
    target,
    format: "esm",
    minify: false,
    external: externalPatterns(external),
    throw: false,
  });
  if (!result.success) {
    throw buildFailed(result.logs.filter((log) => log.level === "error").map((log) => describe(dir, log)));
  }
  const outputs = result.outputs.filter((o) => o.kind !== "sourcemap");
  const entryPoint = outputs.find((o) => o.kind === "entry-point");
  if (outputs.length !== 1 || entryPoint === undefined) throw notOneFile(outputs.map((o) => o.path));
  return { code: new Uint8Array(await entryPoint.arrayBuffer()), root, cwd: await realpath(process.cwd()) };
}

async function buildInChild(dir: string, entry: string, outFile: string, timeoutMs: number, external: string[], target: "bun" | "node"): Promise<Built> {
  const root = await realpath(dir);
  // 1. an empty working folder of our own: `bun build` reads bunfig.toml and .env from its cwd
  const work = await mkdtemp(join(dirname(outFile), ".bundle-"));
  try {
    const outDir = join(work, "out");
    const metaFile = join(work, "meta.json");
    // 2. build with macros off; env {} so the child sees none of the server's secrets
    const child = Bun.spawn(
      [
        process.execPath,
        "build",
        "--no-macros",
        `--target=${target}`,
        "--format=esm",
        "--env=disable",
        `--outdir=${outDir}`,
        `--metafile=${metaFile}`,
        ...externalPatterns(external).map((pattern) => `--external=${pattern}`),
        join(root, entry),
      ],
      { cwd: work, env: { NO_COLOR: "1" }, stdin: "ignore", stdout: "ignore", stderr: "pipe", timeout: timeoutMs },
    );
    const [stderr, exitCode] = await Promise.all([new Response(child.stderr).text(), child.exited]);
    if (child.signalCode !== null) {
      throw new ForgeError(ErrorCode.BuildFailed, 400, `bundling ${entry} took longer than ${timeoutMs} ms`, {
        hint: "bundle it locally with `forge deploy`, which uploads a ready bundle",
      });
    }
    if (exitCode !== 0) throw buildFailed(parseCliErrors(root, stderr));

    // 3. every input must come from the function folder
    const meta = (await Bun.file(metaFile).json()) as { inputs?: Record<string, unknown> };
    for (const input of Object.keys(meta.inputs ?? {})) {
      const path = await realpath(resolve(work, input)).catch(() => resolve(work, input));
      if (!isInside(root, path)) {
        // relative, so the message names the import without describing the server's folders
        throw new ForgeError(ErrorCode.BuildFailed, 400, `the code imports ${relative(root, path)}, which is outside the function folder`, {
          hint: "keep everything the function imports inside its folder (npm install packages there), or deploy with `forge deploy`, which bundles dependencies",
        });
      }
    }

    // 4. exactly one output: assets the bundle would load beside it are not shipped
    const outputs = (await readdir(outDir, { recursive: true, withFileTypes: true }))
      .filter((e) => e.isFile() && !e.name.endsWith(".map"))
      .map((e) => join(e.parentPath, e.name));
    const [only] = outputs;
    if (outputs.length !== 1 || only === undefined) throw notOneFile(outputs.map((p) => relative(outDir, p)));
    return { code: new Uint8Array(await Bun.file(only).arrayBuffer()), root, cwd: await realpath(work) };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** `bun build` prints each error as a code frame, then `error: <message>` and `    at <file>:<line>:<col>`. */
function parseCliErrors(root: string, stderr: string): string[] {
  const lines = stderr.split("\n");
  const out: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^error: (.*)$/.exec(lines[i] ?? "");
    if (!m) continue;
    const at = /^\s+at (.+):(\d+):(\d+)$/.exec(lines[i + 1] ?? "");
    const file = at?.[1];
    out.push(file ? `${displayPath(root, file)}:${at[2]}:${at[3]}: ${m[1]}` : (m[1] ?? ""));
  }
  if (out.length === 0 && stderr.trim() !== "") out.push(stderr.trim().split("\n").slice(-3).join(" "));
  return out;
}

function describe(dir: string, log: BuildMessageLike): string {
  const pos = log.position;
  return pos ? `${displayPath(dir, pos.file)}:${pos.line}:${pos.column}: ${log.message}` : log.message;
}

function displayPath(root: string, file: string): string {
  const rel = relative(root, file);
  return rel.startsWith("..") || isAbsolute(rel) ? file : rel;
}

function buildFailed(messages: string[]): ForgeError {
  const shown = messages.slice(0, MAX_MESSAGES);
  const more = messages.length > MAX_MESSAGES ? `\n(and ${messages.length - MAX_MESSAGES} more)` : "";
  const body = shown.length > 0 ? `:\n${shown.join("\n")}${more}` : "";
  const unresolved = messages.some((m) => m.includes("Could not resolve"));
  return new ForgeError(ErrorCode.BuildFailed, 400, `the function does not bundle${body}`, { hint: unresolved ? DEPENDENCY_HINT : CODE_HINT });
}

function notOneFile(paths: string[]): ForgeError {
  return new ForgeError(ErrorCode.BuildFailed, 400, `the bundle needs files beside it (${paths.slice(0, 5).join(", ")})`, {
    hint: "import assets as text or JSON, or fetch them at run time; forge ships one bundle file",
  });
}

function entryMissing(entry: string, from: "entry" | "handler" | "none"): ForgeError {
  return new ForgeError(ErrorCode.BuildFailed, 400, `entry ${entry} not found in the function folder`, {
    hint:
      from === "entry"
        ? `add ${entry} to the folder, or set "entry" in forge.json to the module that exports your handler`
        : from === "handler"
          ? `forge.json "handler" is "file.export": add that file, or set "entry" in forge.json to the module`
          : `add index.ts (or index.js, index.mjs, index.cjs, src/index.ts, main.ts), set package.json "main", or set "entry" in forge.json, e.g. {"entry": "src/server.ts"}`,
  });
}

function isFileInside(dir: string, rel: string): boolean {
  if (rel === "" || isAbsolute(rel) || rel.split(/[\\/]/).includes("..")) return false;
  const path = join(dir, rel);
  return existsSync(path) && statSync(path).isFile();
}

function isInside(root: string, path: string): boolean {
  return path === root || path.startsWith(root.endsWith(sep) ? root : root + sep);
}
