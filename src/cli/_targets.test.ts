import { describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../../test/_helpers.ts";
import { readTargets, showPath, updateTargets, writeTargets } from "./_targets.ts";

describe("the targets file", () => {
  test("missing: no targets", () => {
    using dir = tempDir();
    expect(readTargets(join(dir, "forge", "config.json"))).toEqual({ targets: {} });
  });

  test("written 0600 in a 0700 folder (made, or narrowed when it was wider), with no temp file left", () => {
    using dir = tempDir();
    const path = join(dir, "xdg", "forge", "config.json");
    writeTargets(path, { current: "a", targets: { a: { url: "http://127.0.0.1:1", key: "k" } } });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, "xdg", "forge")).mode & 0o777).toBe(0o700);
    chmodSync(join(dir, "xdg", "forge"), 0o755);
    updateTargets(path, (f) => void (f.targets.b = { url: "http://127.0.0.1:2", key: "k2" }));
    expect(statSync(join(dir, "xdg", "forge")).mode & 0o777).toBe(0o700);
    expect(readdirSync(join(dir, "xdg", "forge"))).toEqual(["config.json"]);
    expect(readTargets(path)).toEqual({ current: "a", targets: { a: { url: "http://127.0.0.1:1", key: "k" }, b: { url: "http://127.0.0.1:2", key: "k2" } } });
    expect(JSON.parse(readFileSync(path, "utf8")).current).toBe("a");
  });

  test("a current naming no target is no current target", () => {
    using dir = tempDir();
    const path = join(dir, "config.json");
    writeFileSync(path, JSON.stringify({ current: "gone", targets: {} }));
    expect(readTargets(path)).toEqual({ targets: {} });
  });

  test("only the file's own targets are targets: not constructor or toString, and a \"__proto__\" target is a plain name", () => {
    using dir = tempDir();
    const path = join(dir, "config.json");
    expect("constructor" in readTargets(path).targets).toBe(false);
    writeFileSync(path, JSON.stringify({ current: "constructor", targets: { a: { url: "http://127.0.0.1:1", key: "k" } } }));
    const file = readTargets(path);
    expect(file.current).toBeUndefined();
    expect(["constructor" in file.targets, "toString" in file.targets]).toEqual([false, false]);
    writeFileSync(path, '{"current": "__proto__", "targets": {"__proto__": {"url": "http://127.0.0.1:2", "key": "k2"}}}');
    const odd = readTargets(path);
    expect(odd.current).toBe("__proto__");
    expect(Object.keys(odd.targets)).toEqual(["__proto__"]);
    expect(odd.targets["__proto__"]).toEqual({ url: "http://127.0.0.1:2", key: "k2" });
  });

  test("a malformed file is a user error naming it, with the expected shape as hint", () => {
    using dir = tempDir();
    mkdirSync(join(dir, "f"));
    const path = join(dir, "f", "config.json");
    for (const text of ["{", "[]", '{"targets": {"a": {"url": 1}}}']) {
      writeFileSync(path, text);
      expect(() => readTargets(path, "~/f/config.json")).toThrow("~/f/config.json is not a forge config file");
    }
  });

  test("paths are shown from the working folder, else from home", () => {
    expect(showPath("/home/u/p/.forge/api-key", { cwd: "/home/u/p", home: "/home/u" })).toBe("./.forge/api-key");
    expect(showPath("/home/u/.config/forge/config.json", { home: "/home/u" })).toBe("~/.config/forge/config.json");
    expect(showPath("/etc/forge/config.json", { cwd: "/home/u", home: "/home/u" })).toBe("/etc/forge/config.json");
  });
});
