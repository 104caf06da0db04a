/** forge.json's "network" field (the rest of the contract is covered through deploys). */
import { describe, expect, test } from "bun:test";
import { ErrorCode, ForgeError } from "../errors.ts";
import { parseConfigInput, resolveConfig } from "./function-config.ts";

describe("forge.json network", () => {
  test("egress by default; none and egress are taken as written", () => {
    expect(resolveConfig("greet").network).toBe("egress");
    expect(resolveConfig("greet", parseConfigInput({ network: "none" })).network).toBe("none");
    expect(parseConfigInput({ network: "egress" })).toEqual({ network: "egress" });
  });

  test("anything else is a 400 naming the field and what it takes", () => {
    for (const bad of ["host", "bridge", "", null, 0, ["none"]]) {
      const error = (() => {
        try {
          parseConfigInput({ network: bad });
        } catch (err) {
          return err;
        }
      })();
      expect(error).toBeInstanceOf(ForgeError);
      expect((error as ForgeError).code).toBe(ErrorCode.InvalidConfig);
      expect((error as ForgeError).message).toBe(`forge.json: "network" must be "egress" or "none"`);
    }
  });
});
