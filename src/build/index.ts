/** src/build: pack a folder, unpack an upload safely, bundle an entry, read forge.json. */
export { ALWAYS_IGNORED, IGNORE_FILE, packDir, packFiles } from "./pack.ts";
export type { PackFile, PackOptions } from "./pack.ts";
export { safeUnpack } from "./unpack.ts";
export type { UnpackLimits, UnpackResult } from "./unpack.ts";
export { ENTRY_CANDIDATES, bundleEntry, findEntry } from "./bundle.ts";
export type { BundleOptions, BundleResult } from "./bundle.ts";
export { FUNCTION_DEFAULTS, PATCHABLE_FIELDS, parseConfigInput, resolveConfig, splitHandler } from "./function-config.ts";
export type { FunctionConfig, FunctionConfigInput, FunctionRuntime } from "./function-config.ts";
export { IMAGE_BUNDLE_PATH, IMAGE_LABELS, buildImage, contextTar, createImageBuilder, folderContext, functionImageName } from "./images.ts";
export type { BuildOptions, ContextEntry, FunctionImageBuilder, ImageBuilderOptions } from "./images.ts";
export { RUNTIME_NAMES, buildRuntimeImage, defaultRuntimeImage, runtimeImageState } from "./runtime-images.ts";
export type { RuntimeImageOptions, RuntimeImageResult, RuntimeImageState, RuntimeName } from "./runtime-images.ts";
