/** Reading forge's GET /metrics from outside: the sum of a family's samples, or null without it. */

export interface MemorySample {
  countedBytes: number | null;
  residentBytes: number | null;
  /** GiB-seconds of instances, summed over functions. */
  instanceGiBs: number | null;
  /** GiB-seconds of stem cells. */
  cellGiBs: number | null;
  /** Instances in any state, and stem cells (the start state of a replay). */
  instances: number | null;
  stemCells: number | null;
}

/** The sum of every sample of `name` (any labels) in Prometheus text; null when there is none. */
export function sumOf(text: string, name: string): number | null {
  let sum: number | null = null;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== " " && rest[0] !== "{") continue; // another family sharing the prefix
    const value = Number(rest.slice(rest.lastIndexOf(" ") + 1));
    if (Number.isFinite(value)) sum = (sum ?? 0) + value;
  }
  return sum;
}

export function memorySample(text: string): MemorySample {
  return {
    countedBytes: sumOf(text, "forge_memory_counted_bytes"),
    residentBytes: sumOf(text, "forge_memory_resident_bytes"),
    instanceGiBs: sumOf(text, "forge_instance_memory_seconds_total"),
    cellGiBs: sumOf(text, "forge_cell_memory_seconds_total"),
    instances: sumOf(text, "forge_instances"),
    stemCells: sumOf(text, "forge_stem_cells"),
  };
}

/** One scrape of `url`/metrics with the API key as Bearer (harmless where it is open). */
export async function scrape(url: string, key: string): Promise<string> {
  const res = await fetch(new URL("/metrics", url), { headers: { authorization: `Bearer ${key}` } });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /metrics answered ${res.status}: ${text.slice(0, 200)}`);
  return text;
}
