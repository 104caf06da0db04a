/** `forge db create|status|list|delete`: provisioned Postgres databases (POST/GET/DELETE /v1/provision). */
import { defineCommand, type CommandDef } from "citty";
import { ErrorCode, ForgeError } from "../errors.ts";
import type { ForgeClient } from "./client.ts";
import { ago, client, intArg, jsonArg, output, table, ui } from "./_shared.ts";

interface JobView {
  id: string;
  service_name: string;
  resource: string;
  backend: string;
  status: "pending" | "provisioning" | "ready" | "failed" | "deleting" | "deleted";
  created_at: string;
  updated_at: string;
  attempts: number;
  detail?: string;
  connection?: { host: string; port: number; username: string; password: string; database: string };
  url?: string;
}

const waitArgs = {
  wait: { type: "boolean", default: true, description: "wait until it is done (--no-wait returns at once)" },
  timeout: { type: "string", description: "longest wait, seconds (default 300)" },
} as const;

const create = defineCommand({
  meta: { name: "create", description: "provision a Postgres database for a service" },
  args: {
    service: { type: "positional", required: true, description: "service name (a DNS label, e.g. checkout)" },
    backend: { type: "string", description: "docker (a container of its own) or shared (a database on FORGE_PG_ADMIN_URL); default the server's" },
    ...waitArgs,
    ...jsonArg,
  },
  async run({ args }) {
    const api = client();
    const body: Record<string, string> = { service_name: String(args.service), resource: "postgres" };
    if (args.backend) body.backend = String(args.backend);
    let job = await api.json<JobView>("POST", "/v1/provision", body);
    if (args.wait) job = await waitFor(api, job, ["ready", "failed", "deleting", "deleted"], waitMs(args.timeout), Boolean(args.json));
    if (job.status === "failed") throw failed(job);
    output(Boolean(args.json), job, () => {
      if (job.status !== "ready") {
        ui.info(`job ${job.id}: ${job.service_name} is ${job.status}; follow it with \`forge db status ${job.id}\``);
        return;
      }
      ui.success(`database ${job.service_name} is ready (job ${job.id}, ${job.backend}, ${seconds(job)})`);
      ui.log(job.url ?? "");
      ui.info(`bind it to a function: forge deploy --db ${job.service_name}`);
    });
  },
});

const status = defineCommand({
  meta: { name: "status", description: "show a provisioning job" },
  args: { id: { type: "positional", required: true, description: "job id" }, ...jsonArg },
  async run({ args }) {
    const job = await client().json<JobView>("GET", `/v1/provision/${encodeURIComponent(String(args.id))}`);
    output(Boolean(args.json), job, () => {
      const rows = [
        ["id", job.id],
        ["service", job.service_name],
        ["backend", job.backend],
        ["status", job.status],
        ["attempts", String(job.attempts)],
        ["created", `${job.created_at} (${ago(Date.now() - Date.parse(job.created_at))} ago)`],
        ...(job.detail ? [["detail", job.detail]] : []),
        ...(job.connection ? [["host", `${job.connection.host}:${job.connection.port}`], ["database", job.connection.database], ["user", job.connection.username]] : []),
        ...(job.url ? [["url", job.url]] : []),
      ];
      ui.log(table(rows));
    });
  },
});

const list = defineCommand({
  meta: { name: "list", description: "list provisioning jobs, newest first" },
  args: {
    limit: { type: "string", description: "jobs a page (1-100, default 20)" },
    cursor: { type: "string", description: "next_cursor of the previous page" },
    ...jsonArg,
  },
  async run({ args }) {
    const q = new URLSearchParams();
    const limit = intArg(args.limit, "limit");
    if (limit !== undefined) q.set("limit", String(limit));
    if (args.cursor) q.set("cursor", String(args.cursor));
    const page = await client().json<{ jobs: JobView[]; next_cursor: string | null }>("GET", `/v1/provision${q.size ? `?${q}` : ""}`);
    output(Boolean(args.json), page, () => {
      if (page.jobs.length === 0) return ui.info("no databases yet: create one with `forge db create checkout`");
      const rows = [["ID", "SERVICE", "BACKEND", "STATUS", "CREATED"]];
      for (const j of page.jobs) rows.push([j.id, j.service_name, j.backend, j.status, `${ago(Date.now() - Date.parse(j.created_at))} ago`]);
      ui.log(table(rows));
      if (page.next_cursor) ui.info(`more: forge db list --cursor ${page.next_cursor}`);
    });
  },
});

const remove = defineCommand({
  meta: { name: "delete", description: "delete a provisioned database (its container or database goes)" },
  args: { id: { type: "positional", required: true, description: "job id" }, ...waitArgs, ...jsonArg },
  async run({ args }) {
    const api = client();
    let job = await api.json<JobView>("DELETE", `/v1/provision/${encodeURIComponent(String(args.id))}`);
    if (args.wait) job = await waitFor(api, job, ["deleted"], waitMs(args.timeout), Boolean(args.json));
    output(Boolean(args.json), job, () => {
      if (job.status === "deleted") ui.success(`database ${job.service_name} (job ${job.id}) deleted`);
      else ui.info(`job ${job.id}: ${job.status}${job.detail ? ` (${job.detail})` : ""}; follow it with \`forge db status ${job.id}\``);
    });
  },
});

export default defineCommand({
  meta: { name: "db", description: "provisioned Postgres databases: create, status, list, delete" },
  subCommands: { create, status, list, delete: remove } as Record<string, CommandDef>,
});

// --- internal ---

const FRAMES = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/** Polls a job until its status is one of `done`, showing a spinner on a terminal. */
async function waitFor(api: ForgeClient, first: JobView, done: JobView["status"][], timeoutMs: number, quiet: boolean): Promise<JobView> {
  const started = Date.now();
  const tty = !quiet && process.stderr.isTTY === true;
  let job = first;
  let shown: string | undefined;
  let frame = 0;
  const spin = tty
    ? setInterval(() => {
        const s = ((Date.now() - started) / 1000).toFixed(1);
        process.stderr.write(`\r${FRAMES[frame++ % FRAMES.length]} ${job.service_name}: ${job.status} ${s}s `);
      }, 80)
    : undefined;
  try {
    while (!done.includes(job.status)) {
      if (!tty && !quiet && shown !== job.status) ui.info(`${job.service_name}: ${job.status}`);
      shown = job.status;
      if (Date.now() - started > timeoutMs) {
        throw new ForgeError(ErrorCode.QueueTimeout, 504, `job ${job.id} is still ${job.status} after ${Math.round(timeoutMs / 1000)} s`, {
          hint: `it goes on in the background: \`forge db status ${job.id}\``,
        });
      }
      await Bun.sleep(250); // polling interval of the status
      job = await api.json<JobView>("GET", `/v1/provision/${job.id}`);
    }
    return job;
  } finally {
    if (spin) {
      clearInterval(spin);
      process.stderr.write("\r\x1b[2K");
    }
  }
}

function waitMs(v: unknown): number {
  return (intArg(v, "timeout") ?? 300) * 1000;
}

function seconds(job: JobView): string {
  return `${((Date.parse(job.updated_at) - Date.parse(job.created_at)) / 1000).toFixed(1)}s`;
}

function failed(job: JobView): ForgeError {
  return new ForgeError(ErrorCode.Internal, 502, `provisioning ${job.service_name} failed: ${job.detail ?? "no reason given"}`, {
    hint: `see \`forge db status ${job.id}\` and forge's log; remove the job with \`forge db delete ${job.id}\` and try again`,
  });
}
