/** The web dashboard: page shells, script and stylesheet under /ui on the apex host. */
export { CONTENT_SECURITY_POLICY, mountDashboard } from "./dashboard.tsx";
