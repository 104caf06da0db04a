import { defineCommand } from "citty";
import { ErrorCode, ForgeError } from "../errors.ts";
import { clientSettings, jsonArg, output, table, ui } from "./_shared.ts";
import { assertTargetName, readTargets, updateTargets } from "./_targets.ts";

export default defineCommand({
  meta: { name: "targets", description: "list the CLI's targets (never their keys); `forge targets use NAME` makes one current" },
  args: {
    action: { type: "positional", required: false, description: "use: make target NAME the current one" },
    name: { type: "positional", required: false, description: "the target (with use)" },
    ...jsonArg,
  },
  async run({ args }) {
    const settings = clientSettings();
    if (args.action !== undefined) {
      if (args.action !== "use" || args.name === undefined) {
        throw new ForgeError(ErrorCode.BadRequest, 400, `forge targets takes \`use NAME\`, got ${JSON.stringify([args.action, args.name].filter(Boolean).join(" "))}`, { hint: "e.g. forge targets use local" });
      }
      const name = assertTargetName(String(args.name));
      updateTargets(
        settings.configFile,
        (file) => {
          if (!(name in file.targets)) {
            const names = Object.keys(file.targets);
            throw new ForgeError(ErrorCode.NotFound, 404, `there is no target ${JSON.stringify(name)} in ${settings.configShown}`, {
              hint: `${names.length ? `its targets: ${names.join(", ")}. ` : ""}add it with \`forge login --url URL --target ${name}\``,
            });
          }
          file.current = name;
        },
        settings.configShown,
      );
      output(Boolean(args.json), { current: name }, () => ui.success(`target ${name} is the current one`));
      return;
    }
    const file = readTargets(settings.configFile, settings.configShown);
    const list = Object.entries(file.targets).map(([name, t]) => ({ name, url: t.url, current: name === file.current }));
    output(Boolean(args.json), { config: settings.configFile, targets: list }, () => {
      if (list.length === 0) return ui.info(`no targets in ${settings.configShown} yet: \`forge up\` saves one, \`forge login --url URL\` adds one`);
      const rows = [["", "TARGET", "URL"]];
      for (const t of list) rows.push([t.current ? "*" : "", t.name, t.url]);
      ui.log(table(rows));
      if (settings.url || settings.apiKey) ui.info(`${[settings.url ? "FORGE_URL" : "", settings.apiKey ? "FORGE_API_KEY" : ""].filter(Boolean).join(" and ")} set: it comes before the current target`);
    });
  },
});
