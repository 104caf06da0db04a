/**
 * A Postgres server of a test's own (Debian's postgresql 15 binaries, the ones .ci/services.sh
 * runs), for tests that stop and start it: the shared test server must stay up for the rest.
 * As root the cluster belongs to the postgres user, as Postgres refuses to run as root.
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../src/bench/_docker-bench.ts";

const BIN = "/usr/lib/postgresql/15/bin";

export interface PrivatePostgres extends AsyncDisposable {
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
}

export async function startPrivatePostgres(): Promise<PrivatePostgres> {
  const dir = mkdtempSync(join(tmpdir(), "forge-pg-"));
  chmodSync(dir, 0o777); // the postgres user writes in it
  const data = join(dir, "data");
  const asRoot = process.getuid?.() === 0;
  const run = async (args: string[]): Promise<void> => {
    const cmd = asRoot ? ["su", "postgres", "-c", args.map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ")] : args;
    const proc = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe" });
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`${args.join(" ")} failed (${code}): ${out}${err}`);
  };
  await run([`${BIN}/initdb`, "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"]);
  const port = freePort();
  const start = (): Promise<void> => run([`${BIN}/pg_ctl`, "-D", data, "-w", "-o", `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, "-l", join(dir, "log"), "start"]);
  const stop = (): Promise<void> => run([`${BIN}/pg_ctl`, "-D", data, "-w", "-m", "fast", "stop"]);
  await start();
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start,
    stop,
    async [Symbol.asyncDispose]() {
      await run([`${BIN}/pg_ctl`, "-D", data, "-w", "-m", "immediate", "stop"]).catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
