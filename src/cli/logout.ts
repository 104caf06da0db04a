import { defineCommand } from "citty";
import { ErrorCode, ForgeError } from "../errors.ts";
import { clientSettings, connectionFlags, jsonArg, output, ui } from "./_shared.ts";
import { assertTargetName, readTargets, updateTargets } from "./_targets.ts";

export default defineCommand({
  meta: { name: "logout", description: "remove a target (its URL and key) from the CLI's config" },
  args: {
    target: { type: "string", description: "the target to remove (default the current one)" },
    ...jsonArg,
  },
  async run({ args }) {
    const settings = clientSettings();
    const flag = connectionFlags().target;
    const name = flag === undefined ? readTargets(settings.configFile, settings.configShown).current : assertTargetName(flag);
    if (name === undefined) {
      throw new ForgeError(ErrorCode.BadRequest, 400, `there is no current target in ${settings.configShown}`, { hint: "`forge targets` lists them; remove one with `forge logout --target NAME`" });
    }
    const left = updateTargets(
      settings.configFile,
      (file) => {
        if (!(name in file.targets)) {
          throw new ForgeError(ErrorCode.NotFound, 404, `there is no target ${JSON.stringify(name)} in ${settings.configShown}`, { hint: "`forge targets` lists them" });
        }
        delete file.targets[name];
        if (file.current === name) delete file.current;
        return Object.keys(file.targets);
      },
      settings.configShown,
    );
    output(Boolean(args.json), { removed: name, targets: left }, () => {
      ui.success(`removed target ${name} from ${settings.configShown}`);
      if (left.length > 0) ui.info(`no current target now: pick one with \`forge targets use NAME\` (${left.join(", ")})`);
    });
  },
});
