/**
 * The CLI's credentials as a new user meets them: `forge up` saves its URL and key in the
 * user's config, so `forge deploy` works from any folder with no FORGE_* variable; `forge
 * login` adds a second forge (key on stdin) and --target picks between them; a refused key
 * says where it came from. Every user here is a temp HOME and XDG_CONFIG_HOME.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { cli, ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

/** A user with no settings but a home folder: HOME and XDG_CONFIG_HOME of their own. */
function user(home: string): { env: Record<string, string>; configFile: string } {
  const xdg = join(home, ".config");
  return { env: { HOME: home, XDG_CONFIG_HOME: xdg }, configFile: join(xdg, "forge", "config.json") };
}

/** examples/hello copied into `dir`, outside the project. */
function helloIn(dir: string): string {
  const fn = join(dir, "my-function");
  cpSync(join(ROOT, "examples/hello"), fn, { recursive: true });
  return fn;
}

interface ListedFunction {
  name: string;
}

describe("the CLI's targets", () => {
  const home = tempDir("forge-home-");
  const me = user(home);
  let first: ForgeProcess;
  let second: ForgeProcess;

  beforeAll(async () => {
    // forge up of the user (their XDG_CONFIG_HOME); the second forge saves into a config of its own.
    [first, second] = await Promise.all([startForge({ env: { XDG_CONFIG_HOME: me.env.XDG_CONFIG_HOME ?? "" } }), startForge()]);
  });
  afterAll(async () => {
    await Promise.all([first?.[Symbol.asyncDispose](), second?.[Symbol.asyncDispose]()]);
    home[Symbol.dispose]();
  });

  test("forge up saves its URL and key as the current target, in a 0600 file in a 0700 folder, and says where", async () => {
    // Not just "saved in": the API key line before it says that too ("generated, saved in <data dir>").
    await until(() => first.output().includes("the CLI reaches it as target"), 10_000, "forge up's saved line");
    expect(first.output()).toContain(`the CLI reaches it as target local (current), saved in ${me.configFile}`);
    const config = JSON.parse(readFileSync(me.configFile, "utf8"));
    expect(config).toEqual({ current: "local", targets: { local: { url: first.url, key: first.apiKey } } });
    expect(statSync(me.configFile).mode & 0o777).toBe(0o600);
    expect(statSync(join(me.env.XDG_CONFIG_HOME ?? "", "forge")).mode & 0o777).toBe(0o700);
  });

  test("forge deploy . from a folder outside the project, with no FORGE_* variable, reaches the forge of forge up", async () => {
    const fn = helloIn(home);
    const r = await cli(undefined, ["deploy", ".", "--name", "greet"], me.env, { cwd: fn });
    expect(r.stderr + r.stdout).not.toContain("ERROR");
    expect(r.code).toBe(0);
    const res = await first.fn("greet", "/?name=Target");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ message: "Hello, Target!" });
  });

  test("forge login adds a second forge with the key on stdin, makes it current, and --target picks either", async () => {
    const login = await cli(undefined, ["login", "--url", second.url, "--target", "second"], me.env, { cwd: home, stdin: `${second.apiKey}\n` });
    expect(login.stderr).toBe("");
    expect(login.code).toBe(0);
    expect(login.stdout).toContain("as target second (current), saved in ~/.config/forge/config.json");
    expect(statSync(me.configFile).mode & 0o777).toBe(0o600);

    using fnHome = tempDir("forge-fn-");
    const fn = helloIn(fnHome);
    expect((await cli(undefined, ["deploy", ".", "--name", "only-second"], me.env, { cwd: fn })).code).toBe(0);

    const names = async (...args: string[]): Promise<string[]> => {
      const r = await cli(undefined, ["list", "--json", ...args], me.env, { cwd: home });
      expect(r.code).toBe(0);
      return (JSON.parse(r.stdout) as ListedFunction[]).map((f) => f.name).sort();
    };
    expect(await names()).toEqual(["only-second"]);
    expect(await names("--target", "second")).toEqual(["only-second"]);
    expect(await names("--target", "local")).toEqual(["greet"]);
    expect(await names("--target=local")).toEqual(["greet"]);
    // Global flags go anywhere on the line.
    const before = await cli(undefined, ["--target", "local", "list", "--json"], me.env, { cwd: home });
    expect((JSON.parse(before.stdout) as ListedFunction[]).map((f) => f.name)).toEqual(["greet"]);

    const targets = await cli(undefined, ["targets"], me.env, { cwd: home });
    expect(targets.code).toBe(0);
    expect(targets.stdout).toMatch(/\*\s+second\s+http:\/\//);
    expect(targets.stdout).toMatch(/\n\s+local\s+http:\/\//);
    expect(targets.stdout + targets.stderr).not.toContain(first.apiKey);
    expect(targets.stdout + targets.stderr).not.toContain(second.apiKey);

    expect((await cli(undefined, ["targets", "use", "local"], me.env, { cwd: home })).code).toBe(0);
    expect(await names()).toEqual(["greet"]);

    const logout = await cli(undefined, ["logout", "--target", "second"], me.env, { cwd: home });
    expect(logout.code).toBe(0);
    expect(JSON.parse(readFileSync(me.configFile, "utf8"))).toEqual({ current: "local", targets: { local: { url: first.url, key: first.apiKey } } });
    const gone = await cli(undefined, ["list", "--target", "second"], me.env, { cwd: home });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('there is no target "second"');
  });

  test("forge login with a wrong key or an unreachable URL fails clearly and saves nothing", async () => {
    using other = tempDir("forge-home-");
    const them = user(other);
    const wrong = await cli(undefined, ["login", "--url", first.url], them.env, { cwd: other, stdin: "not-the-key\n" });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(`the API key from stdin was refused by forge at ${first.url}`);
    expect(wrong.stdout).toContain("hint: check the key: forge up prints it");
    const away = await cli(undefined, ["login", "--url", "http://127.0.0.1:9", "--key", "k"], them.env, { cwd: other });
    expect(away.code).toBe(1);
    expect(away.stderr).toContain("cannot reach forge at http://127.0.0.1:9 (the URL from --url)");
    const none = await cli(undefined, ["login", "--url", first.url], them.env, { cwd: other });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no API key was given");
    expect(() => statSync(them.configFile)).toThrow();
  });

  describe("a refused key says where it came from", () => {
    test("FORGE_API_KEY", async () => {
      const r = await cli(undefined, ["list"], { ...me.env, FORGE_URL: first.url, FORGE_API_KEY: "wrong" }, { cwd: home });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`the API key from FORGE_API_KEY was refused by forge at ${first.url}`);
      expect(r.stdout).toContain(`hint: FORGE_API_KEY comes before the saved targets: set it to the key forge up printed, or unset it and run forge login --url ${first.url}`);
    });

    test("a target of the config file", async () => {
      using other = tempDir("forge-home-");
      const them = user(other);
      mkdirSync(join(them.env.XDG_CONFIG_HOME ?? "", "forge"), { recursive: true });
      writeFileSync(them.configFile, JSON.stringify({ current: "stale", targets: { stale: { url: first.url, key: "an-old-key" } } }));
      const r = await cli(undefined, ["list"], them.env, { cwd: other });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`the API key from target stale in ~/.config/forge/config.json was refused by forge at ${first.url}`);
      expect(r.stdout).toContain("hint: save the right key with forge login --target stale (forge up prints the key)");
      // --target names it the same way.
      const picked = await cli(undefined, ["info", "greet", "--target", "stale"], them.env, { cwd: other });
      expect(picked.stderr).toContain("the API key from target stale in ~/.config/forge/config.json was refused");
    });

    test("--key", async () => {
      const r = await cli(undefined, ["list", "--key", "wrong"], me.env, { cwd: home });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`the API key from --key was refused by forge at ${first.url}`);
    });

    test("./.forge/api-key", async () => {
      using dir = tempDir("forge-cwd-");
      mkdirSync(join(dir, ".forge"));
      writeFileSync(join(dir, ".forge", "api-key"), "a-key-of-another-forge\n");
      const r = await cli(undefined, ["list"], { ...user(dir).env, FORGE_URL: first.url }, { cwd: dir });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`the API key from ./.forge/api-key was refused by forge at ${first.url}`);
    });

    test("no key at all: the places it looked in", async () => {
      using dir = tempDir("forge-cwd-");
      const r = await cli(undefined, ["list"], { ...user(dir).env, FORGE_URL: first.url }, { cwd: dir });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`forge at ${first.url} wants an API key, and none was found (looked in --key, FORGE_API_KEY, ~/.config/forge/config.json (no current target), ./.forge/api-key)`);
      expect(r.stdout).toContain(`hint: run forge login --url ${first.url} and give it the key forge up printed`);
    });
  });

  test("the key of the current target is not sent to another URL given by FORGE_URL", async () => {
    const r = await cli(undefined, ["list"], { ...me.env, FORGE_URL: second.url }, { cwd: home });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`forge at ${second.url} wants an API key`);
    expect(r.stderr).toContain(`target local in ~/.config/forge/config.json (it is for ${first.url})`);
  });
});

test("bin/forge through a symlink, as `npm link` or `npm install -g .` installs it, runs from any folder", async () => {
  using dir = tempDir("forge-bin-");
  mkdirSync(join(dir, "bin"));
  symlinkSync(join(ROOT, "bin/forge"), join(dir, "bin", "forge"));
  const proc = Bun.spawn([join(dir, "bin", "forge"), "targets", "--json"], {
    cwd: dir,
    env: { PATH: "/usr/bin:/bin", HOME: dir, XDG_CONFIG_HOME: join(dir, "xdg") },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect(err).toBe("");
  expect(code).toBe(0);
  expect(JSON.parse(out)).toEqual({ config: join(dir, "xdg", "forge", "config.json"), targets: [] });
});
