/** src/bench: the load generator, its histogram, the suite of scenarios, and its reports. */
export { Histogram } from "./histogram.ts";
export type { CdfPoint, HistogramData, HistogramOptions } from "./histogram.ts";
export { formatProgress, formatUs, runLoad, runLoadInWorker } from "./load.ts";
export type { ErrorKind, LoadErrors, LoadOptions, LoadProgress, LoadResult, ProgressStream } from "./load.ts";
export { compareReports, computeRatios, formatReport, machineInfo, parseReport, SCHEMA_VERSION } from "./report.ts";
export type { BenchReport, MachineInfo, Ratio, ScenarioKind, ScenarioResult } from "./report.ts";
export { renderHtml } from "./report-html.ts";
export { runSuite, SCENARIOS } from "./suite.ts";
export type { ScenarioName, SuiteOptions } from "./suite.ts";
