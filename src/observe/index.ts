/** Observability: function logs, Prometheus metrics, invocation statistics. */
export { LogStore, type FunctionLogLine, type LogQuery, type LogStoreOptions } from "./log-store.ts";
export { Metrics, type Gauges, type GaugeSample, type MetricsOptions } from "./metrics.ts";
export { percentile, windowStats, type WindowStats } from "./stats.ts";
export { createLogger } from "./logger.ts";
