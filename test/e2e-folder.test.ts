/**
 * Whole-folder artifacts end to end: a function's own files next to its code are there in
 * the instance, through `__dirname` (a CommonJS Lambda handler), `import.meta.dir` and
 * `process.cwd()` (a fetch handler), deployed with the real CLI (trusted bundle plus the
 * folder) and as raw source through the API (bundled by the server), on the process driver
 * and the docker driver, from a cold start and through a stem cell. Native addons ship as
 * packages in the folder's node_modules (process driver).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { packDir } from "../src/build/index.ts";
import { cli, ROOT, startForge, tempDir, until, type ForgeProcess } from "./_helpers.ts";
import { requireDocker } from "./_services.ts";

const engine = await requireDocker();

function writeTree(dir: string, files: Record<string, string>): string {
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, path)), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  return dir;
}

/** A CommonJS Lambda handler rendering template.html beside it; lib/ reads its own file through its own __dirname. */
const LAMBDA = {
  "index.js": `const fs = require("fs");
const path = require("path");
const { greeting } = require("./lib/greeting.js");
exports.handler = async () => ({
  statusCode: 200,
  headers: { "content-type": "text/html" },
  body: fs.readFileSync(path.join(__dirname, "template.html"), "utf8").replace("{{greeting}}", greeting()),
});
`,
  "lib/greeting.js": `const fs = require("fs");
exports.greeting = () => fs.readFileSync(__dirname + "/greeting.txt", "utf8").trim();
`,
  "lib/greeting.txt": "Hello from lib\n",
  "template.html": "<h1>{{greeting}}</h1>",
};

/** A fetch handler reading a file through import.meta.dir and process.cwd(); sub/ reads through its own import.meta.dir. */
const FETCH = {
  "index.ts": `import { note } from "./sub/note.ts";
export default {
  async fetch(): Promise<Response> {
    const byMeta = await Bun.file(import.meta.dir + "/data/message.txt").text();
    const byCwd = await Bun.file(process.cwd() + "/data/message.txt").text();
    return Response.json({ byMeta, byCwd, note: await note() });
  },
};
`,
  "sub/note.ts": `export const note = () => Bun.file(import.meta.dir + "/note.txt").text();\n`,
  "sub/note.txt": "a note in sub",
  "data/message.txt": "the message",
};

const EXPECTED_LAMBDA = "<h1>Hello from lib</h1>";
const EXPECTED_FETCH = { byMeta: "the message", byCwd: "the message", note: "a note in sub" };

const drivers: ("process" | "docker")[] = engine ? ["process", "docker"] : ["process"];
if (!engine) test.skip("whole-folder artifacts on the docker driver (no Docker engine)", () => {});

for (const driver of drivers) {
  for (const start of ["cold", "cell"] as const) {
    describe(`whole-folder artifacts on the ${driver} driver, ${start === "cell" ? "through a stem cell" : "from a cold start"}`, () => {
      const data = tempDir("forge-folder-data-");
      const fns = tempDir("forge-folder-fns-");
      let forge: ForgeProcess;

      beforeAll(async () => {
        forge = await startForge({ dataDir: data, env: { FORGE_DRIVER: driver, FORGE_STEM_CELLS: start === "cell" ? "1" : "0" } });
      });
      afterAll(async () => {
        try {
          if (forge) {
            for (const name of ["tpl", "files", "rawtpl", "rawfiles"]) await cli(forge, ["delete", name]);
            await forge.stop();
          }
        } finally {
          data[Symbol.dispose]();
          fns[Symbol.dispose]();
        }
      });

      /** Deploys with the CLI, then checks which way the deploy's instance started. */
      async function deploy(name: string, files: Record<string, string>): Promise<void> {
        const dir = writeTree(join(fns, name), { ...files, "forge.json": JSON.stringify({ name }) });
        const r = await cli(forge, ["deploy", dir]);
        if (r.code !== 0) throw new Error(`deploy ${name} failed:\n${r.stdout}\n${r.stderr}`);
      }

      /** Raw source through the API: the server bundles it (untrusted build) into the folder. */
      async function deployRaw(name: string, files: Record<string, string>): Promise<void> {
        const dir = writeTree(join(fns, name), files);
        const res = await forge.api(`/v1/functions/${name}/deploy`, { method: "POST", body: await packDir(dir), headers: { "content-type": "application/gzip" } });
        const text = await res.text();
        if (!res.ok || text.includes('"error"')) throw new Error(`deploy ${name} failed: ${res.status} ${text}`);
      }

      /** Where the deploy's (verifying) instance came from: it serves the first request. */
      async function origins(name: string): Promise<string[]> {
        const info = (await (await forge.api(`/v1/functions/${name}`)).json()) as { pool: { instances: { origin: string }[] } };
        return info.pool.instances.map((i) => i.origin);
      }

      /** Through a cell: one must be ready before the deploy takes it. */
      async function cellReady(): Promise<void> {
        // bun's own: "1" is one cell of every runtime, and a ready node cell must not stand in for it
        if (start === "cell") await until(async () => ((await (await forge.api("/readyz")).json()) as { stemCellsByRuntime: { bun: number } }).stemCellsByRuntime.bun >= 1, 60_000, "a bun stem cell");
      }

      test("a CommonJS Lambda handler reads template.html beside it through __dirname", async () => {
        await cellReady();
        await deploy("tpl", LAMBDA);
        expect(await origins("tpl")).toEqual([start]);
        const res = await forge.fn("tpl", "/");
        expect(res.status).toBe(200);
        expect(await res.text()).toBe(EXPECTED_LAMBDA);
      }, 120_000);

      test("a fetch handler reads its files through import.meta.dir and process.cwd()", async () => {
        await cellReady();
        await deploy("files", FETCH);
        expect(await origins("files")).toEqual([start]);
        const res = await forge.fn("files", "/");
        expect(await res.json()).toEqual(EXPECTED_FETCH);
      }, 120_000);

      test("raw source through the API is bundled by the server into the folder, with the same answers", async () => {
        await deployRaw("rawtpl", LAMBDA);
        expect(await (await forge.fn("rawtpl", "/")).text()).toBe(EXPECTED_LAMBDA);
        await deployRaw("rawfiles", FETCH);
        expect(await (await forge.fn("rawfiles", "/")).json()).toEqual(EXPECTED_FETCH);
      }, 120_000);
    });
  }
}

describe("native addons on the process driver", () => {
  const data = tempDir("forge-native-data-");
  const fns = tempDir("forge-native-fns-");
  let forge: ForgeProcess;
  beforeAll(async () => {
    forge = await startForge({ dataDir: data, env: { FORGE_STEM_CELLS: "1" } });
  });
  afterAll(async () => {
    try {
      if (forge) await forge.stop();
    } finally {
      data[Symbol.dispose]();
      fns[Symbol.dispose]();
    }
  });

  test("a package with a native addon (bufferutil) ships in the folder's node_modules and loads", async () => {
    const dir = writeTree(join(fns, "masker"), {
      "forge.json": JSON.stringify({ name: "masker" }),
      "index.ts": `import bufferutil from "bufferutil";
export default { fetch() { const b = Buffer.from([1, 2, 3, 4]); bufferutil.mask(b, Buffer.from([1, 1, 1, 1]), b, 0, 4); return Response.json([...b]); } };
`,
    });
    for (const name of ["bufferutil", "node-gyp-build"]) cpSync(join(ROOT, "node_modules", name), join(dir, "node_modules", name), { recursive: true });
    const r = await cli(forge, ["deploy", dir]);
    expect(r.code).toBe(0);
    expect(await (await forge.fn("masker", "/")).json()).toEqual([0, 3, 2, 5]);
  }, 60_000);

  test("a native addon that cannot load fails the deploy, naming its package", async () => {
    const dir = writeTree(join(fns, "broken"), {
      "forge.json": JSON.stringify({ name: "broken" }),
      "index.ts": `import addon from "broken-addon";\nexport default { fetch() { return new Response(String(addon)); } };\n`,
      "node_modules/broken-addon/package.json": JSON.stringify({ name: "broken-addon", main: "index.js" }),
      "node_modules/broken-addon/index.js": `module.exports = require("./build/Release/broken.node");\n`,
      "node_modules/broken-addon/build/Release/broken.node": "not a shared library",
    });
    const r = await cli(forge, ["deploy", dir]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("broken-addon");
  }, 60_000);
});
