import { defineConfig } from "drizzle-kit";

// `bun run db:generate` after changing src/store/schema.ts; openStore applies ./drizzle.
export default defineConfig({
  dialect: "sqlite",
  schema: "./src/store/schema.ts",
  out: "./drizzle",
});
