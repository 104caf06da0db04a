ALTER TABLE `versions` ADD `status` text DEFAULT 'ready' NOT NULL;--> statement-breakpoint
ALTER TABLE `versions` ADD `error` text;