/** The router: control API, data plane and health endpoints as one Hono app. */
export { createRouter, type ForgeApp, type RouterOptions } from "./app.ts";
export { readBodyLimited, readJson } from "./_body.ts";
