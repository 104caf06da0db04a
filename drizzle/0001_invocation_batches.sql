CREATE TABLE `invocation_batches` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`function` text NOT NULL,
	`first_at` integer NOT NULL,
	`last_at` integer NOT NULL,
	`count` integer NOT NULL,
	`lines` text NOT NULL
);
--> statement-breakpoint
CREATE INDEX `invocation_batches_function_last_at_idx` ON `invocation_batches` (`function`,`last_at`);