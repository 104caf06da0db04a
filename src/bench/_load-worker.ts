/** Worker thread of runLoadInWorker: runs one load and posts progress and the result back. */
import { runLoad, type WorkerReply, type WorkerRequest } from "./load.ts";

declare const self: Worker;

const controller = new AbortController();

self.onmessage = (event: MessageEvent<WorkerRequest>) => {
  const msg = event.data;
  if (msg.type === "stop") {
    controller.abort();
    return;
  }
  const post = (reply: WorkerReply): void => self.postMessage(reply);
  const every = msg.options.progressEveryMs;
  runLoad({
    ...msg.options,
    signal: controller.signal,
    ...(every === 0 ? {} : { onProgress: (progress) => post({ type: "progress", progress }) }),
  }).then(
    (result) => post({ type: "done", result: { ...result, latency: result.latency.toJSON() } }),
    (err: unknown) => post({ type: "error", message: err instanceof Error ? err.message : String(err) }),
  );
};
