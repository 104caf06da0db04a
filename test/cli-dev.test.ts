/**
 * `forge dev` end to end: the real CLI as a subprocess against a real forge (process driver),
 * on a temporary folder it watches. Edits go live, errors keep the last good version serving,
 * a save without a change deploys nothing, the function's logs stream with request ids, and
 * Ctrl-C leaves the function deployed (or deletes it with --rm).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";

let forge: ForgeProcess;

beforeAll(async () => {
  forge = await startForge();
});
afterAll(async () => {
  await forge?.[Symbol.asyncDispose]();
});

/** How long a deploy may take on a busy CI machine before a wait gives up (not a timing assertion). */
const DEPLOY_WAIT_MS = 30_000;

interface DevProcess extends AsyncDisposable {
  /** stdout and stderr so far, interleaved as they arrived. */
  output(): string;
  /** Waits until the output after `from` (a length of output()) matches `pattern`; returns the match. */
  waitFor(pattern: RegExp, from?: number, what?: string): Promise<RegExpExecArray>;
  signal(signal: NodeJS.Signals): void;
  exited: Promise<number>;
}

/** Runs `forge dev ...args` against the test's forge; killed on dispose whatever happened. */
function startDev(args: string[]): DevProcess {
  const proc = Bun.spawn([process.execPath, join(ROOT, "src/cli/main.ts"), "dev", ...args], {
    cwd: ROOT,
    // the user's own config is never read: the forge is named by the environment alone
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/root", XDG_CONFIG_HOME: join(forge.dataDir, "xdg-dev"), NO_COLOR: "1", FORGE_URL: forge.url, FORGE_API_KEY: forge.apiKey },
    stdout: "pipe",
    stderr: "pipe",
  });
  let out = "";
  const pump = async (s: ReadableStream<Uint8Array>): Promise<void> => {
    const dec = new TextDecoder();
    for await (const chunk of s as unknown as AsyncIterable<Uint8Array>) out += dec.decode(chunk, { stream: true });
  };
  const pumped = Promise.all([pump(proc.stdout), pump(proc.stderr)]);
  return {
    output: () => out,
    waitFor: (pattern, from = 0, what = String(pattern)) =>
      until(() => pattern.exec(out.slice(from)), DEPLOY_WAIT_MS, `${what} in forge dev's output`).catch((err: unknown) => {
        throw new Error(`${(err as Error).message}; it printed:\n${out}`);
      }),
    signal: (signal) => proc.kill(signal),
    exited: proc.exited.then(async (code) => (await pumped, code)),
    async [Symbol.asyncDispose]() {
      proc.kill("SIGKILL");
      await proc.exited;
    },
  };
}

const handler = (answer: string): string => `export default {
  fetch(): Response {
    console.log("serving ${answer}");
    return new Response(${JSON.stringify(answer)});
  },
};
`;

async function answer(name: string): Promise<string> {
  const res = await forge.fn(name);
  return `${res.status} ${await res.text()}`;
}

describe("forge dev", () => {
  test("deploys the folder, makes each edit live, keeps the last good version through a syntax error and a module that does not load, queues an edit made during a deploy, skips a save without a change, and leaves the function deployed on Ctrl-C", async () => {
    using dir = tempDir("forge-dev-");
    const index = join(dir, "index.ts");
    writeFileSync(index, handler("one"));
    await using dev = startDev([dir, "--name", "devloop"]);

    await dev.waitFor(/devloop v1 is live at (http:\/\/\S+)/);
    expect(dev.output()).toContain(`devloop v1 is live at http://devloop.localhost:${forge.port}`);
    expect(await answer("devloop")).toBe("200 one");

    // An edit goes live.
    let mark = dev.output().length;
    const t0 = performance.now();
    writeFileSync(index, handler("two"));
    await until(async () => (await answer("devloop")) === "200 two", DEPLOY_WAIT_MS, "the edit to answer");
    console.log(`forge dev: an edit answered ${(performance.now() - t0).toFixed(0)} ms after it was written`);
    await dev.waitFor(/devloop v2 is live/, mark);

    // A syntax error is shown, and v2 goes on serving.
    mark = dev.output().length;
    writeFileSync(index, `export default { fetch() { return new Response("broken" }\n`);
    await dev.waitFor(/v2 is still serving/, mark, "the build error");
    expect(dev.output().slice(mark)).toMatch(/index\.ts/);
    expect(await answer("devloop")).toBe("200 two");

    // Fixing it deploys again.
    mark = dev.output().length;
    writeFileSync(index, handler("three"));
    await dev.waitFor(/devloop v3 is live/, mark);
    expect(await answer("devloop")).toBe("200 three");

    // A module that throws as it loads: the server's message and hint, and v3 goes on serving.
    mark = dev.output().length;
    writeFileSync(index, `throw new Error("no config at load");\nexport default { fetch: () => new Response("never") };\n`);
    await dev.waitFor(/v3 is still serving/, mark, "the load error");
    const loadError = dev.output().slice(mark);
    expect(loadError).toContain("not activated");
    expect(loadError).toContain("no config at load");
    expect(loadError).toContain("hint: v3 is still active and serving");
    expect(await answer("devloop")).toBe("200 three");

    mark = dev.output().length;
    writeFileSync(index, handler("four"));
    await dev.waitFor(/devloop v5 is live/, mark); // v4 is the version that did not load
    expect(await answer("devloop")).toBe("200 four");

    // An edit during a deploy queues one more deploy, after it.
    mark = dev.output().length;
    writeFileSync(index, handler("five"));
    await dev.waitFor(/deploying devloop \.\.\./, mark);
    writeFileSync(index, handler("six"));
    await dev.waitFor(/devloop v7 is live/, mark);
    expect(dev.output().slice(mark)).toContain("devloop v6 is live");
    expect(await answer("devloop")).toBe("200 six");
    // Never two deploys at once: each "deploying" line is followed by its outcome before the next.
    const steps = [...dev.output().matchAll(/deploying devloop \.\.\.|is live|is still serving/g)].map((m) => (m[0].startsWith("deploying") ? "deploy" : "done"));
    expect(steps.join(" ")).not.toContain("deploy deploy");

    // The same bytes saved again, then a touch: nothing to deploy.
    mark = dev.output().length;
    writeFileSync(index, handler("six"));
    await dev.waitFor(/no change to deploy \(v7 is live\)/, mark, "the unchanged save");
    mark = dev.output().length;
    const later = new Date(Date.now() + 5_000);
    utimesSync(index, later, later);
    await dev.waitFor(/no change to deploy \(v7 is live\)/, mark, "the touch");
    const versions = (await (await forge.api("/v1/functions/devloop/versions")).json()) as { versions: { version: number }[] };
    expect(Math.max(...versions.versions.map((v) => v.version))).toBe(7);

    // Ctrl-C: exits 0, the function stays deployed and answering.
    dev.signal("SIGINT");
    expect(await dev.exited).toBe(0);
    expect(dev.output()).toContain("devloop v7 stays deployed");
    expect(await answer("devloop")).toBe("200 six");
  }, 120_000);

  test("prints the function's log lines with their request ids, and --rm deletes the function on Ctrl-C", async () => {
    using dir = tempDir("forge-dev-");
    writeFileSync(join(dir, "index.ts"), handler("logged"));
    await using dev = startDev([dir, "--name", "devlogs", "--rm"]);
    await dev.waitFor(/devlogs v1 is live/);

    const res = await forge.fn("devlogs");
    expect(await res.text()).toBe("logged");
    const requestId = res.headers.get("x-forge-request-id") ?? "";
    expect(requestId).not.toBe("");
    await dev.waitFor(new RegExp(` v1 \\[${requestId}\\] serving logged`), 0, "the request's log line");

    dev.signal("SIGINT");
    expect(await dev.exited).toBe(0);
    expect(dev.output()).toContain("deleted devlogs");
    expect((await forge.api("/v1/functions/devlogs")).status).toBe(404);
  }, 120_000);
});
