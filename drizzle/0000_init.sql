CREATE TABLE `functions` (
	`name` text PRIMARY KEY NOT NULL,
	`active_version` integer,
	`last_version` integer DEFAULT 0 NOT NULL,
	`config` text NOT NULL,
	`created_at` integer NOT NULL,
	`updated_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `functions_created_at_idx` ON `functions` (`created_at`);--> statement-breakpoint
CREATE TABLE `invocations` (
	`id` text PRIMARY KEY NOT NULL,
	`function` text NOT NULL,
	`version` integer NOT NULL,
	`instance` text,
	`start` text,
	`kind` text NOT NULL,
	`state` text NOT NULL,
	`status` integer,
	`attempts` integer DEFAULT 0 NOT NULL,
	`queue_wait_ms` integer,
	`duration_ms` integer,
	`bytes_in` integer DEFAULT 0 NOT NULL,
	`bytes_out` integer DEFAULT 0 NOT NULL,
	`payload` text,
	`result` text,
	`error` text,
	`created_at` integer NOT NULL,
	`updated_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `invocations_function_created_at_idx` ON `invocations` (`function`,`created_at`);--> statement-breakpoint
CREATE TABLE `schedules` (
	`id` text PRIMARY KEY NOT NULL,
	`function` text NOT NULL,
	`cron` text NOT NULL,
	`timezone` text,
	`payload` text,
	`overlap` text DEFAULT 'skip' NOT NULL,
	`runs` integer DEFAULT 0 NOT NULL,
	`skipped` integer DEFAULT 0 NOT NULL,
	`last_run_at` integer,
	`last_status` integer,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
CREATE INDEX `schedules_function_idx` ON `schedules` (`function`);--> statement-breakpoint
CREATE TABLE `versions` (
	`function` text NOT NULL,
	`version` integer NOT NULL,
	`digest` text NOT NULL,
	`config` text NOT NULL,
	`artifact` text NOT NULL,
	`image` text,
	`active` integer DEFAULT false NOT NULL,
	`created_at` integer NOT NULL,
	PRIMARY KEY(`function`, `version`),
	FOREIGN KEY (`function`) REFERENCES `functions`(`name`) ON UPDATE no action ON DELETE cascade
);
