import { defineCommand } from "citty";
import { createInterface } from "node:readline";
import { DEFAULT_FORGE_URL } from "../config.ts";
import { ErrorCode, ForgeError } from "../errors.ts";
import { ForgeClient } from "./client.ts";
import { checkUrl } from "./_connection.ts";
import { clientSettings, connectionFlags, jsonArg, output, ui } from "./_shared.ts";
import { assertTargetName, isTargetName, readTargets, updateTargets } from "./_targets.ts";

export default defineCommand({
  meta: { name: "login", description: "save a forge's URL and API key as a target of the CLI (after checking the key), and make it current" },
  args: {
    url: { type: "string", description: "the forge's URL (default: the target's, else FORGE_URL, else http://127.0.0.1:8080)" },
    key: { type: "string", description: "its API key (default: one line read from stdin, e.g. `echo $KEY | forge login --url ...`)" },
    target: { type: "string", description: "the target's name (default: the URL's host, e.g. 127.0.0.1:8080)" },
    ...jsonArg,
  },
  async run({ args }) {
    // --url, --key and --target are every command's flags: main.ts took them out of argv.
    const flags = connectionFlags();
    const settings = clientSettings();
    const existing = flags.target === undefined ? undefined : readTargets(settings.configFile, settings.configShown).targets[assertTargetName(flags.target)];
    const url = flags.url !== undefined ? checkUrl(flags.url, "--url") : (existing?.url ?? settings.url ?? DEFAULT_FORGE_URL);
    const host = new URL(url).host;
    const name = flags.target ?? (isTargetName(host) ? host : "default");
    const fromFlag = flags.key !== undefined && flags.key !== "";
    const key = fromFlag ? flags.key : await readLine(`API key of the forge at ${url}: `);
    if (!key) {
      throw new ForgeError(ErrorCode.BadRequest, 400, "no API key was given", {
        hint: `pipe it in (\`echo "$KEY" | forge login --url ${url}\`) or give --key; forge up prints the key`,
      });
    }

    // Checked before it is saved: a typo fails here, not at the next deploy.
    const check = new ForgeClient(url, key, {
      urlFrom: flags.url !== undefined ? "--url" : existing ? `target ${name} in ${settings.configShown}` : settings.url ? "FORGE_URL" : "the default",
      keyFrom: { from: fromFlag ? "--key" : "stdin", fix: "check the key: forge up prints it when it starts (it is also in its data folder's api-key file)" },
      looked: [],
    });
    await check.list();

    updateTargets(
      settings.configFile,
      (file) => {
        file.targets[name] = { url, key };
        file.current = name;
      },
      settings.configShown,
    );
    output(Boolean(args.json), { target: name, url, current: true, config: settings.configFile }, () => {
      ui.success(`logged in to ${url} as target ${name} (current), saved in ${settings.configShown}`);
    });
  },
});

// --- internal ---

/** The first line of stdin, trimmed (a prompt on stderr when it is a terminal); undefined at EOF. */
async function readLine(prompt: string): Promise<string | undefined> {
  if (process.stdin.isTTY) process.stderr.write(prompt);
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false });
  try {
    for await (const line of rl) return line.trim() || undefined;
    return undefined;
  } finally {
    rl.close();
  }
}
