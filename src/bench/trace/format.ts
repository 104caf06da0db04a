/**
 * The Azure Functions 2019 trace ("Serverless in the Wild", ATC'20) as forge reads and writes
 * it: three CSV files of one day, under the dataset's own names.
 *
 *   invocations_per_function_md.anon.dNN.csv   HashOwner,HashApp,HashFunction,Trigger,1..1440
 *   function_durations_percentiles.anon.dNN.csv per function: Average,Count,Minimum,Maximum,
 *                                                percentile_Average_{0,1,25,50,75,99,100} (ms)
 *   app_memory_percentiles.anon.dNN.csv         per app: SampleCount,AverageAllocatedMb,
 *                                                AverageAllocatedMb_pct{1,5,25,50,75,95,99,100}
 *
 * Only the invocations file is required: a function without a durations row, or an app
 * without a memory row (both happen in the real dataset), gets DEFAULT_DURATION / DEFAULT_MEMORY.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { expectHeader, numberAt, parseCsv, TraceFormatError } from "./csv.ts";

/** The percentiles of a durations row, in the file's column order. */
export const DURATION_PERCENTILES = [0, 1, 25, 50, 75, 99, 100] as const;
/** The percentiles of a memory row, in the file's column order. */
export const MEMORY_PERCENTILES = [1, 5, 25, 50, 75, 95, 99, 100] as const;

export interface TraceFunction {
  owner: string;
  app: string;
  hash: string;
  trigger: string;
  /** Invocations in each minute of the day, the first minute first. */
  perMinute: number[];
}

export interface FunctionDurations {
  owner: string;
  app: string;
  hash: string;
  /** Mean run time, ms. */
  average: number;
  count: number;
  minimum: number;
  maximum: number;
  /** Run time at each of DURATION_PERCENTILES, ms. */
  percentiles: number[];
}

export interface AppMemory {
  owner: string;
  app: string;
  sampleCount: number;
  /** Mean allocated memory, MB. */
  average: number;
  /** Allocated memory at each of MEMORY_PERCENTILES, MB. */
  percentiles: number[];
}

export interface Trace {
  /** The day of the files, as in their names ("d01"). */
  day: string;
  functions: TraceFunction[];
  durations: FunctionDurations[];
  memory: AppMemory[];
}

/** For a function with no durations row: a 50 ms median, the generator's typical shape. */
export const DEFAULT_DURATION: Pick<FunctionDurations, "percentiles" | "minimum" | "maximum"> = { percentiles: [5, 8, 25, 50, 80, 200, 300], minimum: 5, maximum: 300 };
/** For an app with no memory row, MB. */
export const DEFAULT_MEMORY_MB = 64;

export const fileNames = (day: string) => ({
  invocations: `invocations_per_function_md.anon.${day}.csv`,
  durations: `function_durations_percentiles.anon.${day}.csv`,
  memory: `app_memory_percentiles.anon.${day}.csv`,
});

const INVOCATIONS_HEAD = ["HashOwner", "HashApp", "HashFunction", "Trigger"] as const;
const DURATIONS_HEAD = ["HashOwner", "HashApp", "HashFunction", "Average", "Count", "Minimum", "Maximum", ...DURATION_PERCENTILES.map((p) => `percentile_Average_${p}`)];
const MEMORY_HEAD = ["HashOwner", "HashApp", "SampleCount", "AverageAllocatedMb", ...MEMORY_PERCENTILES.map((p) => `AverageAllocatedMb_pct${p}`)];

/** The lowest day (dNN) of `dir` with an invocations file; throws when there is none. */
export async function findDay(dir: string): Promise<string> {
  const names = await readdir(dir);
  const days = names
    .map((n) => /^invocations_per_function_md\.anon\.(d\d+)\.csv$/.exec(n)?.[1])
    .filter((d): d is string => d !== undefined)
    .sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
  const day = days[0];
  if (!day) throw new Error(`${dir} holds no invocations_per_function_md.anon.dNN.csv (an Azure Functions 2019 trace, or one written by forge bench trace-gen)`);
  return day;
}

/** Reads the trace of the lowest day in `dir`. */
export async function readTrace(dir: string): Promise<Trace> {
  const day = await findDay(dir);
  const names = fileNames(day);
  const text = async (name: string): Promise<string | undefined> => {
    const f = Bun.file(join(dir, name));
    return (await f.exists()) ? f.text() : undefined;
  };
  const invocations = await text(names.invocations);
  if (invocations === undefined) throw new Error(`${join(dir, names.invocations)} does not exist`);
  const durations = await text(names.durations);
  const memory = await text(names.memory);
  return parseTrace(day, { invocations, ...(durations !== undefined ? { durations } : {}), ...(memory !== undefined ? { memory } : {}) });
}

/** Parses the files' contents (durations and memory optional). */
export function parseTrace(day: string, files: { invocations: string; durations?: string; memory?: string }): Trace {
  const names = fileNames(day);
  const inv = parseCsv(files.invocations, names.invocations);
  expectHeader(inv, INVOCATIONS_HEAD, names.invocations);
  const minutes = inv.header.length - INVOCATIONS_HEAD.length;
  if (minutes < 1) throw new TraceFormatError(names.invocations, 1, "no minute columns after Trigger");
  inv.header.slice(INVOCATIONS_HEAD.length).forEach((h, i) => {
    if (h !== String(i + 1)) throw new TraceFormatError(names.invocations, 1, `minute column ${i + 1} is named ${JSON.stringify(h)}`);
  });
  const functions = inv.rows.map((row): TraceFunction => {
    const perMinute: number[] = [];
    for (let c = INVOCATIONS_HEAD.length; c < inv.header.length; c++) {
      const n = numberAt(inv, row, c, names.invocations);
      if (!Number.isInteger(n) || n < 0) throw new TraceFormatError(names.invocations, row.line, `minute ${c - 3} is not a count: ${n}`);
      perMinute.push(n);
    }
    const [owner = "", app = "", hash = "", trigger = ""] = row.fields;
    return { owner, app, hash, trigger, perMinute };
  });

  const durations: FunctionDurations[] = [];
  if (files.durations !== undefined) {
    const csv = parseCsv(files.durations, names.durations);
    expectHeader(csv, DURATIONS_HEAD, names.durations);
    for (const row of csv.rows) {
      const n = (c: number): number => numberAt(csv, row, c, names.durations);
      const [owner = "", app = "", hash = ""] = row.fields;
      durations.push({ owner, app, hash, average: n(3), count: n(4), minimum: n(5), maximum: n(6), percentiles: DURATION_PERCENTILES.map((_, i) => n(7 + i)) });
    }
  }
  const memory: AppMemory[] = [];
  if (files.memory !== undefined) {
    const csv = parseCsv(files.memory, names.memory);
    expectHeader(csv, MEMORY_HEAD, names.memory);
    for (const row of csv.rows) {
      const n = (c: number): number => numberAt(csv, row, c, names.memory);
      const [owner = "", app = ""] = row.fields;
      memory.push({ owner, app, sampleCount: n(2), average: n(3), percentiles: MEMORY_PERCENTILES.map((_, i) => n(4 + i)) });
    }
  }
  return { day, functions, durations, memory };
}

/** The three files' contents, as the dataset writes them. */
export function formatTrace(trace: Trace): { invocations: string; durations: string; memory: string } {
  const minutes = Math.max(0, ...trace.functions.map((f) => f.perMinute.length));
  const lines = (head: readonly string[], rows: (string | number)[][]): string => [head.join(","), ...rows.map((r) => r.join(","))].join("\n") + "\n";
  return {
    invocations: lines(
      [...INVOCATIONS_HEAD, ...Array.from({ length: minutes }, (_, i) => String(i + 1))],
      trace.functions.map((f) => [f.owner, f.app, f.hash, f.trigger, ...Array.from({ length: minutes }, (_, i) => f.perMinute[i] ?? 0)]),
    ),
    durations: lines(DURATIONS_HEAD, trace.durations.map((d) => [d.owner, d.app, d.hash, d.average, d.count, d.minimum, d.maximum, ...d.percentiles])),
    memory: lines(MEMORY_HEAD, trace.memory.map((m) => [m.owner, m.app, m.sampleCount, m.average, ...m.percentiles])),
  };
}

/** Writes the trace's three files into `dir` (which must exist). */
export async function writeTrace(dir: string, trace: Trace): Promise<void> {
  const names = fileNames(trace.day);
  const text = formatTrace(trace);
  await Promise.all([Bun.write(join(dir, names.invocations), text.invocations), Bun.write(join(dir, names.durations), text.durations), Bun.write(join(dir, names.memory), text.memory)]);
}

/** The run-time percentiles of `fn` ([percentile, ms] pairs), its row's or the default's. */
export function durationsOf(trace: Trace, fn: TraceFunction): { points: [number, number][]; fromTrace: boolean } {
  const row = trace.durations.find((d) => d.owner === fn.owner && d.app === fn.app && d.hash === fn.hash);
  const pcts = row?.percentiles ?? DEFAULT_DURATION.percentiles;
  return { points: DURATION_PERCENTILES.map((p, i) => [p, Math.max(0, pcts[i] ?? 0)]), fromTrace: row !== undefined };
}

/** The allocated memory of `fn`'s app ([percentile, MB] pairs), its row's or the default's. */
export function memoryOf(trace: Trace, fn: TraceFunction): { points: [number, number][]; fromTrace: boolean } {
  const row = trace.memory.find((m) => m.owner === fn.owner && m.app === fn.app);
  if (!row) return { points: [[0, DEFAULT_MEMORY_MB], [100, DEFAULT_MEMORY_MB]], fromTrace: false };
  return { points: MEMORY_PERCENTILES.map((p, i) => [p, Math.max(0, row.percentiles[i] ?? 0)]), fromTrace: true };
}
