/** src/build: pack a folder, unpack an upload safely, bundle an entry, read forge.json. */
export { ALWAYS_IGNORED, IGNORE_FILE, packDir, packFiles, packWatchFilter } from "./pack.ts";
export type { PackFile, PackOptions } from "./pack.ts";
export { safeUnpack } from "./unpack.ts";
export type { UnpackLimits, UnpackResult } from "./unpack.ts";
export { ENTRY_CANDIDATES, HANDLER_EXTENSIONS, bundleEntry, findEntry, relocatePaths } from "./bundle.ts";
export type { BundleOptions, BundleResult, EntryHints } from "./bundle.ts";
export { nativePackages, packageClosure, packageMain } from "./native.ts";
export { BUNDLE_FILE, digestFolder, packArtifact, sealArtifact, unpackArtifact } from "./artifact.ts";
export { FUNCTION_DEFAULTS, PATCHABLE_FIELDS, parseConfigInput, resolveConfig, splitHandler } from "./function-config.ts";
export type { FunctionConfig, FunctionConfigInput, FunctionRuntime } from "./function-config.ts";
export { IMAGE_BUNDLE_PATH, IMAGE_LABELS, IMAGE_TASK_ROOT, buildImage, contextTar, createImageBuilder, folderContext, functionImageName } from "./images.ts";
export type { BuildOptions, ContextEntry, FunctionImageBuilder, ImageBuilderOptions } from "./images.ts";
export { RUNTIME_NAMES, buildRuntimeImage, defaultRuntimeImage, runtimeImageState } from "./runtime-images.ts";
export type { RuntimeImageOptions, RuntimeImageResult, RuntimeImageState, RuntimeName } from "./runtime-images.ts";
