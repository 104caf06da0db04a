/**
 * The data path: the public port's gateway (raw HTTP/1.1 to instances), the Request-based
 * path for everything else (invoke, triggers, /fn/ through the app), and the HTTP/1.1 wire
 * layer both use.
 */
export { DataPlane, newRequestId, type DataPlaneOptions, type InvokeOptions } from "./data-plane.ts";
export { Gateway, type GatewayOptions } from "./gateway.ts";
export { clientKey, functionOfHost, isValidHost } from "./hosts.ts";
export { TrustedProxies } from "./forwarded.ts";
