import { defineConfig } from "drizzle-kit";

// The Postgres schema's migrations (issue 15): `bunx drizzle-kit generate --config drizzle-pg.config.ts`
// after changing src/store/pg-schema.ts; migratePostgres applies ./drizzle-pg.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/store/pg-schema.ts",
  out: "./drizzle-pg",
});
