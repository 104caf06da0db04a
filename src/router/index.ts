/** The router: control API, data plane and health endpoints as one Hono app. */
export { createRouter, functionOfHost, toForgeError, type ForgeApp, type RouterOptions } from "./app.ts";
export { DataPlane, newRequestId, type DataPlaneOptions, type InvokeOptions } from "./data-plane.ts";
export { readBodyLimited, readJson } from "./_body.ts";
export { Gateway, type GatewayOptions } from "./gateway.ts";
