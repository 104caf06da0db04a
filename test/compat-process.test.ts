/** Real Lambda and Workers code on the process driver (the suite is test/_compat.case.ts). */
import { compatSuite } from "./_compat.case.ts";

compatSuite("process");
