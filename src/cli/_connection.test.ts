import { describe, expect, test } from "bun:test";
import { ForgeError } from "../errors.ts";
import { resolveConnection, takeConnectionFlags, type ConnectionInputs } from "./_connection.ts";

const CONFIG = "~/.config/forge/config.json";
const LOCAL = { url: "http://127.0.0.1:8080", key: "local-key" };
const PROD = { url: "https://forge.example.com", key: "prod-key" };

function inputs(over: Partial<ConnectionInputs> = {}): ConnectionInputs {
  return {
    flags: {},
    env: {},
    config: { current: "local", targets: { local: LOCAL, prod: PROD } },
    configPath: CONFIG,
    saved: { key: "saved-key", path: "./.forge/api-key" },
    ...over,
  };
}

describe("resolveConnection: flags, then --target, then the environment, then the current target, then ./.forge/api-key", () => {
  test("nothing set: the current target's URL and key", () => {
    const c = resolveConnection(inputs());
    expect([c.url, c.key, c.target]).toEqual([LOCAL.url, LOCAL.key, "local"]);
    expect(c.urlFrom).toBe(`target local in ${CONFIG}`);
    expect(c.keyFrom?.from).toBe(`target local in ${CONFIG}`);
  });

  test("no config at all: the default URL and the key a local forge saved (as before targets)", () => {
    const c = resolveConnection(inputs({ config: { targets: {} } }));
    expect([c.url, c.key, c.urlFrom, c.keyFrom?.from]).toEqual(["http://127.0.0.1:8080", "saved-key", "the default", "./.forge/api-key"]);
  });

  test("names an object has of its own (constructor, toString) are no targets: --target says so, a current one is none", () => {
    expect(() => resolveConnection(inputs({ flags: { target: "constructor" } }))).toThrow('there is no target "constructor"');
    expect(() => resolveConnection(inputs({ flags: { target: "toString" } }))).toThrow('there is no target "toString"');
    const c = resolveConnection(inputs({ config: { current: "hasOwnProperty", targets: { local: LOCAL } } }));
    expect([c.url, c.key, c.urlFrom]).toEqual(["http://127.0.0.1:8080", "saved-key", "the default"]);
  });

  test("--target comes before FORGE_URL and FORGE_API_KEY", () => {
    const c = resolveConnection(inputs({ flags: { target: "prod" }, env: { url: "http://elsewhere:1", key: "env-key" } }));
    expect([c.url, c.key, c.target]).toEqual([PROD.url, PROD.key, "prod"]);
  });

  test("--url and --key come before everything", () => {
    const c = resolveConnection(inputs({ flags: { target: "prod", url: "http://x:1", key: "flag-key" }, env: { url: "http://y:2", key: "env-key" } }));
    expect([c.url, c.key, c.urlFrom, c.keyFrom?.from]).toEqual(["http://x:1", "flag-key", "--url", "--key"]);
  });

  test("--url with --target: that target's key at the given URL", () => {
    const c = resolveConnection(inputs({ flags: { target: "prod", url: "http://tunnel:9" } }));
    expect([c.url, c.key]).toEqual(["http://tunnel:9", PROD.key]);
  });

  test("FORGE_URL and FORGE_API_KEY come before the current target", () => {
    const c = resolveConnection(inputs({ env: { url: "http://y:2", key: "env-key" } }));
    expect([c.url, c.key, c.urlFrom, c.keyFrom?.from]).toEqual(["http://y:2", "env-key", "FORGE_URL", "FORGE_API_KEY"]);
  });

  test("FORGE_API_KEY alone: the current target's URL with that key", () => {
    const c = resolveConnection(inputs({ env: { key: "env-key" } }));
    expect([c.url, c.key]).toEqual([LOCAL.url, "env-key"]);
  });

  test("the current target's key goes only to its own URL: with another FORGE_URL, the saved key", () => {
    const c = resolveConnection(inputs({ env: { url: "http://y:2" } }));
    expect([c.url, c.key, c.keyFrom?.from]).toEqual(["http://y:2", "saved-key", "./.forge/api-key"]);
    const same = resolveConnection(inputs({ env: { url: "http://127.0.0.1:8080/" } }));
    expect(same.key).toBe(LOCAL.key);
  });

  test("no key anywhere: undefined, and the places looked in", () => {
    const c = resolveConnection(inputs({ env: { url: "http://y:2" }, saved: { path: "./.forge/api-key" } }));
    expect(c.key).toBeUndefined();
    expect(c.keyFrom).toBeUndefined();
    expect(c.looked).toEqual(["--key", "FORGE_API_KEY", `target local in ${CONFIG} (it is for ${LOCAL.url})`, "./.forge/api-key"]);
  });

  test("an unknown --target, a malformed name or --url is a user error with a hint", () => {
    for (const flags of [{ target: "staging" }, { target: "no spaces" }, { url: "ftp://x" }]) {
      let err: unknown;
      try {
        resolveConnection(inputs({ flags }));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ForgeError);
      expect((err as ForgeError).isUserError).toBe(true);
      expect((err as ForgeError).hint).toBeTruthy();
    }
  });

  test("every key source has a fix that names a command", () => {
    const sources = [inputs({ flags: { key: "k" } }), inputs({ env: { key: "k" } }), inputs(), inputs({ config: { targets: {} } })];
    for (const i of sources) expect(resolveConnection(i).keyFrom?.fix).toMatch(/forge (login|up)/);
  });
});

describe("takeConnectionFlags", () => {
  test("takes --target, --url and --key (spaced or with =) from anywhere before --", () => {
    const { argv, flags } = takeConnectionFlags(["--target", "prod", "deploy", ".", "--name", "greet", "--url=http://x:1", "--key", "k", "--", "--key", "kept"]);
    expect(argv).toEqual(["deploy", ".", "--name", "greet", "--", "--key", "kept"]);
    expect(flags).toEqual({ target: "prod", url: "http://x:1", key: "k" });
  });

  test("leaves look-alike flags alone", () => {
    const { argv, flags } = takeConnectionFlags(["deploy", "--keys", "x", "--target-dir", "y", "--env", "KEY=1"]);
    expect(argv).toEqual(["deploy", "--keys", "x", "--target-dir", "y", "--env", "KEY=1"]);
    expect(flags).toEqual({});
  });

  test("a flag without its value is a user error", () => {
    expect(() => takeConnectionFlags(["list", "--target"])).toThrow("--target needs a value");
    // a forgotten value is not taken from the next flag
    expect(() => takeConnectionFlags(["list", "--key", "--json"])).toThrow("--key needs a value");
    expect(takeConnectionFlags(["list", "--key=--odd"]).flags.key).toBe("--odd");
  });
});
