/** Triggers: cron schedules and async invocations with retries and dead letters. */
export { nextTick, parseScheduleInput, MAX_SCHEDULE_PAYLOAD_BYTES, type Overlap, type ScheduleInput } from "./cron.ts";
export { localCronLeases, redisCronLeases, type CronLeases, type RedisCronLeasesOptions, type RunLock } from "./cron-leases.ts";
export { Scheduler, type InvokeFn, type ScheduleView, type SchedulerOptions } from "./scheduler.ts";
export {
  AsyncInvoker,
  type Accepted,
  type AsyncInvokerOptions,
  type AsyncJob,
  type AsyncResult,
  type AsyncState,
  type DeadLetterView,
  type InvocationView,
} from "./async-invoker.ts";
export { mountTriggerRoutes, type TriggerRoutesOptions } from "./routes.ts";
