import { defineCommand } from "citty";
import { statSync, watch, type FSWatcher } from "node:fs";
import { resolve } from "node:path";
import { packWatchFilter } from "../build/index.ts";
import { ErrorCode, ForgeError, isForgeError } from "../errors.ts";
import { client, printError, ui } from "./_shared.ts";
import { lines, type ForgeClient } from "./client.ts";
import { deployArgs, deployPacked, functionName, packFolder, parseDeployFlags, readForgeJson, type DeployFlags, type PackedFolder } from "./deploy.ts";
import { formatLogLine, type LogLine } from "./logs.ts";

/**
 * Changes closer together than this make one deploy: an editor's save is often several
 * writes (truncate, write, rename, chmod) within a few ms, `git checkout` many files.
 */
const DEBOUNCE_MS = 120;

/** Wait before following the logs again after the stream broke (forge restarted, network). */
const FOLLOW_RETRY_MS = 1_000;

export default defineCommand({
  meta: { name: "dev", description: "deploy a folder, redeploy it on each change and print its logs, until Ctrl-C" },
  args: {
    ...deployArgs,
    rm: { type: "boolean", description: "delete the function when dev stops (default: leave it deployed)", default: false },
  },
  async run({ args, rawArgs }) {
    const dir = resolve(String(args.dir ?? "."));
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) {
      throw new ForgeError(ErrorCode.BadRequest, 400, `${dir} is not a folder`, { hint: "pass the path of a function folder: forge dev ./greet" });
    }
    const flags = parseDeployFlags(args, rawArgs);
    // The name is fixed for the session: a forge.json edit renaming it does not start a second function.
    const name = functionName(dir, flags, await readForgeJson(dir));
    const stop = Promise.withResolvers<void>();
    let signalled = false;
    const onSignal = (): void => {
      if (signalled) process.exit(130); // a second Ctrl-C does not wait for the deploy under way
      signalled = true;
      stop.resolve();
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    const session = new DevSession(client(), dir, { ...flags, name });
    try {
      ui.info(`forge dev: ${name} from ${dir}; redeploys on each change, Ctrl-C to stop${args.rm ? " (and delete it)" : ""}`);
      session.start();
      await stop.promise;
      await session.stop({ remove: Boolean(args.rm) });
    } finally {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
    }
  },
});

// --- internal ---

/**
 * One `forge dev`: watches the folder, deploys what changed (one deploy at a time; a change
 * during one queues one more), follows the function's logs once a version is live.
 */
class DevSession {
  private watcher: FSWatcher | undefined;
  private filter: (path: string) => boolean = () => true;
  private debounce: ReturnType<typeof setTimeout> | undefined;
  /** The deploy loop under way, if any; `again` asks it for one more round. */
  private running: Promise<void> | undefined;
  private again = false;
  private stopping = false;
  /** What the active version was packed from, and its number. */
  private active: { digest: string; version: number } | undefined;
  /** A pack the server refused (it did not build or load): deploying it again would fail again. */
  private refused: string | undefined;
  private following: Promise<void> | undefined;
  private readonly follow = new AbortController();
  private readonly startedAt = Date.now();

  constructor(
    private readonly api: ForgeClient,
    private readonly dir: string,
    private readonly flags: DeployFlags & { name: string },
  ) {}

  /** Watches the folder and deploys it once. */
  start(): void {
    this.watcher = watch(this.dir, { recursive: true }, (_event, file) => {
      if (file !== null && !this.filter(String(file))) return;
      clearTimeout(this.debounce);
      this.debounce = setTimeout(() => this.schedule(), DEBOUNCE_MS);
    });
    this.watcher.on("error", (err) => ui.warn(`watching ${this.dir} failed: ${err.message}; restart forge dev`));
    this.schedule();
  }

  /** Stops watching and following, waits for a deploy under way; deletes the function with `remove`. */
  async stop(options: { remove: boolean }): Promise<void> {
    this.stopping = true;
    clearTimeout(this.debounce);
    this.watcher?.close();
    this.follow.abort();
    if (this.running) {
      ui.info("waiting for the deploy under way ...");
      await this.running;
    }
    await this.following;
    if (options.remove) {
      try {
        await this.api.delete(this.flags.name);
        ui.success(`deleted ${this.flags.name}`);
      } catch (err) {
        if (!(isForgeError(err) && err.code === ErrorCode.FunctionNotFound)) printError(err);
      }
    } else if (this.active) {
      ui.info(`${this.flags.name} v${this.active.version} stays deployed (\`forge delete ${this.flags.name}\` removes it)`);
    }
  }

  private schedule(): void {
    if (this.stopping) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.deployOnce();
      } while (this.again && !this.stopping);
    })().finally(() => {
      this.running = undefined;
    });
  }

  /** Packs the folder and deploys it when what would be uploaded changed; reports, never throws. */
  private async deployOnce(): Promise<void> {
    const t0 = performance.now();
    let packed: PackedFolder;
    try {
      // .forgeignore may be what changed
      this.filter = await packWatchFilter(this.dir);
      packed = await packFolder(this.dir, this.flags);
    } catch (err) {
      this.report(err);
      return;
    }
    if (packed.digest === this.active?.digest || packed.digest === this.refused) {
      // A touch, a save of the same bytes, or a change packing leaves out.
      ui.log(`no change to deploy${this.active ? ` (v${this.active.version} is live)` : ""}`);
      return;
    }
    ui.info(`deploying ${this.flags.name} ...`);
    try {
      const result = await deployPacked(this.api, packed);
      const first = this.active === undefined;
      this.active = { digest: packed.digest, version: result.version };
      this.refused = undefined;
      const ms = Math.round(performance.now() - t0);
      ui.success(first ? `${result.name} v${result.version} is live at ${result.url} (${ms} ms)` : `${result.name} v${result.version} is live (${ms} ms)`);
      this.following ??= this.followLogs();
    } catch (err) {
      // A build or load error is the code's: the same pack would fail the same way.
      // Only the content's own refusal (it did not build, load or validate): a refused key, a
      // timeout or a full forge (401, 408, 429) may pass on the next try with the same bytes.
      if (isForgeError(err) && err.isUserError && ![401, 403, 408, 429].includes(err.status)) this.refused = packed.digest;
      this.report(err);
    }
  }

  private report(err: unknown): void {
    printError(err);
    ui.info(this.active ? `v${this.active.version} is still serving; save a fix to deploy again` : "nothing is serving yet; save a fix to deploy again");
  }

  /** Prints the function's log lines from the start of the session, following again after a break. */
  private async followLogs(): Promise<void> {
    const signal = this.follow.signal;
    let since = this.startedAt;
    // Lines of the millisecond `since` already printed: a follow again from there skips them.
    let printed = new Set<string>();
    let warned = false;
    while (!signal.aborted) {
      try {
        const res = await this.api.request("GET", `/v1/functions/${encodeURIComponent(this.flags.name)}/logs?follow=1&since=${since}`, { signal });
        for await (const raw of lines(res)) {
          const line = JSON.parse(raw) as LogLine;
          const key = `${line.instance}\0${line.stream}\0${line.requestId ?? ""}\0${line.text}`;
          if (line.ts < since || (line.ts === since && printed.has(key))) continue;
          if (line.ts > since) {
            since = line.ts;
            printed = new Set();
          }
          printed.add(key);
          warned = false;
          process.stdout.write(formatLogLine(line));
        }
      } catch (err) {
        if (signal.aborted) return;
        if (!warned) ui.warn(`following the logs broke: ${err instanceof Error ? err.message : String(err)}; trying again every ${FOLLOW_RETRY_MS / 1000} s`);
        warned = true;
      }
      await new Promise<void>((done) => {
        const timer = setTimeout(done, FOLLOW_RETRY_MS);
        signal.addEventListener("abort", () => (clearTimeout(timer), done()), { once: true });
      });
    }
  }
}
