/** The shim's contract on Node.js: the same suite as on Bun (runtimes/js/shim.case.ts), WebSockets aside. */
import { shimSuite } from "../js/shim.case.ts";

shimSuite("node");
