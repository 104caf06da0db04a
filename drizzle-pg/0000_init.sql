CREATE TABLE "functions" (
	"name" text PRIMARY KEY NOT NULL,
	"active_version" integer,
	"last_version" integer DEFAULT 0 NOT NULL,
	"config" jsonb NOT NULL,
	"created_at" bigint NOT NULL,
	"updated_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "invocation_batches" (
	"seq" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (sequence name "invocation_batches_seq_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"function" text NOT NULL,
	"first_at" bigint NOT NULL,
	"last_at" bigint NOT NULL,
	"count" integer NOT NULL,
	"lines" text NOT NULL,
	"data" "bytea"
);
--> statement-breakpoint
CREATE TABLE "invocations" (
	"id" text PRIMARY KEY NOT NULL,
	"function" text NOT NULL,
	"version" integer NOT NULL,
	"instance" text,
	"start" text,
	"kind" text NOT NULL,
	"state" text NOT NULL,
	"status" integer,
	"attempts" integer DEFAULT 0 NOT NULL,
	"queue_wait_ms" double precision,
	"duration_ms" double precision,
	"bytes_in" bigint DEFAULT 0 NOT NULL,
	"bytes_out" bigint DEFAULT 0 NOT NULL,
	"payload" text,
	"result" text,
	"error" text,
	"created_at" bigint NOT NULL,
	"updated_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "schedules" (
	"id" text PRIMARY KEY NOT NULL,
	"function" text NOT NULL,
	"cron" text NOT NULL,
	"timezone" text,
	"payload" text,
	"overlap" text DEFAULT 'skip' NOT NULL,
	"runs" integer DEFAULT 0 NOT NULL,
	"skipped" integer DEFAULT 0 NOT NULL,
	"last_run_at" bigint,
	"last_status" integer,
	"created_at" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "versions" (
	"function" text NOT NULL,
	"version" integer NOT NULL,
	"digest" text NOT NULL,
	"config" jsonb NOT NULL,
	"artifact" text NOT NULL,
	"image" text,
	"active" boolean DEFAULT false NOT NULL,
	"status" text DEFAULT 'ready' NOT NULL,
	"error" text,
	"created_at" bigint NOT NULL,
	CONSTRAINT "versions_function_version_pk" PRIMARY KEY("function","version")
);
--> statement-breakpoint
ALTER TABLE "versions" ADD CONSTRAINT "versions_function_fk" FOREIGN KEY ("function") REFERENCES "public"."functions"("name") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "functions_created_at_idx" ON "functions" USING btree ("created_at");--> statement-breakpoint
CREATE INDEX "invocation_batches_function_last_at_idx" ON "invocation_batches" USING btree ("function","last_at");--> statement-breakpoint
CREATE INDEX "invocations_function_created_at_idx" ON "invocations" USING btree ("function","created_at");--> statement-breakpoint
CREATE INDEX "schedules_function_idx" ON "schedules" USING btree ("function");