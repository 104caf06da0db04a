/** Functions: the deploy pipeline, lifecycle and invocation records. */
export { FunctionService, type BindingResolver, type DeployProgress, type DeployResult, type FunctionServiceOptions, type ImageBuilder } from "./service.ts";
export { InvocationRecorder, type RecorderOptions } from "./recorder.ts";
