/** src/bench/trace: the Azure Functions 2019 trace format, a generator of it, and its replay. */
export { parseCsv, TraceFormatError } from "./csv.ts";
export type { Csv, CsvRow } from "./csv.ts";
export { inverseCdf, spreadMinute } from "./draw.ts";
export { DEFAULT_DURATION, DEFAULT_MEMORY_MB, DURATION_PERCENTILES, durationsOf, fileNames, findDay, formatTrace, MEMORY_PERCENTILES, memoryOf, parseTrace, readTrace, writeTrace } from "./format.ts";
export type { AppMemory, FunctionDurations, Trace, TraceFunction } from "./format.ts";
export { generateTrace, POPULAR_PER_MINUTE } from "./generate.ts";
export type { GenerateOptions, Kind } from "./generate.ts";
export { seeded } from "./prng.ts";
export type { Random } from "./prng.ts";
export { planReplay, replayTrace, START_KINDS } from "./replay.ts";
export type { LatencySummary, MemoryPoint, PolicyResult, ReplayFunction, ReplayOptions, ReplayPlan, StartKind, TraceReport } from "./replay.ts";
export { comparisonRows, renderTraceHtml } from "./report.ts";
export { declaredMemoryMb } from "./_function.ts";
