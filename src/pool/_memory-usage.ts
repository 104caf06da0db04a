/**
 * What an instance really uses, for the memory budget (Driver.memoryUsage): the working set
 * of its memory cgroup where it has one, else the resident memory of its process tree.
 *
 * The working set is what docker stats and the kubelet report: usage minus the inactive file
 * cache, which the kernel reclaims before it kills anything. Read as a few small files per
 * instance, asynchronously, so a look at a few hundred instances every 500 ms holds
 * forge's event loop for no more than the parsing.
 */
import { access, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";

/** The two files of a memory cgroup the working set is read from, per version. */
const USAGE_FILES = {
  1: { usage: "memory.usage_in_bytes", inactive: /^total_inactive_file (\d+)$/m },
  2: { usage: "memory.current", inactive: /^inactive_file (\d+)$/m },
} as const;

/** A cgroup's working set in bytes: usage minus inactive file cache (undefined once it is gone). */
export async function cgroupWorkingSet(dir: string, version: 1 | 2): Promise<number | undefined> {
  const files = USAGE_FILES[version];
  try {
    const [usage, stat] = await Promise.all([readFile(join(dir, files.usage), "utf8"), readFile(join(dir, "memory.stat"), "utf8")]);
    const used = Number(usage.trim());
    if (!Number.isFinite(used)) return undefined;
    const inactive = Number(files.inactive.exec(stat)?.[1] ?? 0);
    return Math.max(0, used - inactive);
  } catch {
    return undefined;
  }
}

/**
 * Resident memory of a process and its descendants that is theirs, in bytes: anonymous and
 * shared-memory pages (RssAnon + RssShmem; VmRSS where those are missing). Not all of VmRSS:
 * ~31 of an idle bun's ~34 MB resident are its binary's pages, shared by every instance and
 * dropped under pressure, and a cgroup does not charge them to the instance either.
 * Undefined once the process is gone. Descendants are found through
 * /proc/<pid>/task/<tid>/children (Linux 3.5+, CONFIG_PROC_CHILDREN); without it, the process alone.
 */
export async function processTreeResident(pid: number): Promise<number | undefined> {
  const own = await residentBytes(pid);
  if (own === undefined) return undefined;
  let total = own;
  const seen = new Set([pid]);
  let level = await childrenOf(pid);
  while (level.length > 0) {
    const next: number[] = [];
    const fresh = level.filter((child) => !seen.has(child));
    for (const child of fresh) seen.add(child);
    const sizes = await Promise.all(fresh.map(async (child) => [await residentBytes(child), await childrenOf(child)] as const));
    for (const [bytes, grandchildren] of sizes) {
      total += bytes ?? 0;
      next.push(...grandchildren);
    }
    level = next;
  }
  return total;
}

/** Where a container's memory cgroup is, by the engine's cgroup driver and version. */
export type DockerCgroupLayout = { version: 1 | 2; dir: (containerId: string) => string };

/**
 * The layouts Docker puts containers' cgroups in: v1 (cgroupfs driver), v2 with the systemd
 * driver, v2 with the cgroupfs driver, v1 with the systemd driver.
 */
export const DOCKER_CGROUP_LAYOUTS: readonly DockerCgroupLayout[] = [
  { version: 1, dir: (id) => `/sys/fs/cgroup/memory/docker/${id}` },
  { version: 2, dir: (id) => `/sys/fs/cgroup/system.slice/docker-${id}.scope` },
  { version: 2, dir: (id) => `/sys/fs/cgroup/docker/${id}` },
  { version: 1, dir: (id) => `/sys/fs/cgroup/memory/system.slice/docker-${id}.scope` },
];

/**
 * Finds, with one running container, which layout this host's engine uses (undefined when
 * none is readable: forge in a container of its own, or not root; the caller asks the engine).
 */
export async function findDockerLayout(
  containerId: string,
  layouts: readonly DockerCgroupLayout[] = DOCKER_CGROUP_LAYOUTS,
): Promise<DockerCgroupLayout | undefined> {
  for (const layout of layouts) {
    const dir = layout.dir(containerId);
    const ok = await access(join(dir, USAGE_FILES[layout.version].usage)).then(
      () => true,
      () => false,
    );
    if (ok) return layout;
  }
  return undefined;
}

/** Runs `work` over `items`, at most `limit` at a time. */
export async function boundedAll<T, R>(items: readonly T[], limit: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await work(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

// --- internal ---

const RSS_ANON = /^RssAnon:\s+(\d+) kB/m;
const RSS_SHMEM = /^RssShmem:\s+(\d+) kB/m;
const VM_RSS = /^VmRSS:\s+(\d+) kB/m;

/** Resident memory of one process that is its own (RssAnon + RssShmem), bytes; undefined once it is gone. */
export async function residentBytes(pid: number): Promise<number | undefined> {
  let status: string;
  try {
    status = await readFile(`/proc/${pid}/status`, "utf8");
  } catch {
    return undefined;
  }
  const anon = RSS_ANON.exec(status)?.[1];
  if (anon !== undefined) return (Number(anon) + Number(RSS_SHMEM.exec(status)?.[1] ?? 0)) * 1024;
  const rss = VM_RSS.exec(status)?.[1];
  return rss === undefined ? undefined : Number(rss) * 1024;
}

/** The children of every thread of `pid` (a child belongs to the thread that forked it). */
async function childrenOf(pid: number): Promise<number[]> {
  let tasks: string[];
  try {
    tasks = await readdir(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const lists = await Promise.all(tasks.map((tid) => readFile(`/proc/${pid}/task/${tid}/children`, "utf8").catch(() => "")));
  const out: number[] = [];
  for (const list of lists) for (const child of list.split(" ")) if (child.trim()) out.push(Number(child));
  return out;
}
