/** The shim's contract on Bun (the suite is shim.case.ts; runtimes/node/shim.test.ts runs it on Node). */
import { shimSuite } from "./shim.case.ts";

shimSuite("bun");
