// sfn-activity: write sfn-wasm-worker task handlers in JavaScript as plain functions.
//
//   import { handler, log, TaskError } from "./sfn-activity.js";
//
//   export const handle = handler(async (order, ctx) => {
//     if (!order.items?.length) throw new TaskError("Order.Invalid", "items must be a non-empty array");
//     log("info", `pricing ${order.order_id}`);
//     return { order_id: order.order_id, status: "accepted" };
//   });
//
// Bundle the entry file with this module (esbuild --bundle --format=esm, keeping the
// `sfn:*` and `wasi:*` imports external), then `jco componentize` the bundle.
//
// What becomes of the handler's result (the task's outcome):
// - a returned value (or a promise of one) → SendTaskSuccess with it as JSON; `undefined`,
//   a function, a BigInt or a cycle → error `Worker.InvalidOutput` naming what it was;
// - `throw new TaskError(error, cause)` → SendTaskFailure with exactly that error and cause;
// - an uncaught out-of-memory error (the guest reached its `memory_limit`; SpiderMonkey
//   throws the string "out of memory") → error `Wasm.OutOfMemory`, as for any guest that runs
//   out of memory; the worker names the limit;
// - any other thrown Error → error = its class name (`TypeError`, your own class), cause =
//   its message, then its stack; a thrown string → error `Error`, cause = the string;
// - a task input that is not JSON → error `Task.InvalidInput`.
import { heartbeat as hostHeartbeat, log as hostLog } from "sfn:activity/host@0.1.0";

/** Characters of stack kept in a cause (Step Functions keeps 32 768 in all). */
const MAX_STACK_CHARS = 16000;
const LEVELS = new Set(["trace", "debug", "info", "warn", "error"]);
/** Stack frames of jco's generated glue, which say nothing about the handler. */
const RUNTIME_FRAME = /\/sources\/initializer\.js:/;

/** Fails the task with this `error` (what a state machine's Retry/Catch match) and `cause`. */
export class TaskError extends Error {
  constructor(error, cause = "") {
    super(cause ? `${error}: ${cause}` : String(error));
    this.error = String(error);
    this.cause = String(cause);
  }
}

/** The error every guest that runs out of memory is failed with (the worker's outcome table). */
const OUT_OF_MEMORY = "Wasm.OutOfMemory";
/** What SpiderMonkey throws when an allocation fails. */
const SPIDERMONKEY_OUT_OF_MEMORY = "out of memory";

/** Thrown by `heartbeat()` once Step Functions no longer knows the task: stop working. */
export class TaskOver extends Error {}

/** Writes `message` to the worker's log at `level` (trace, debug, info, warn, error). */
export function log(level, message) {
  const name = String(level).toLowerCase();
  hostLog(LEVELS.has(name) ? name : name === "warning" ? "warn" : "info", String(message));
}

/** Asks the worker to send SendTaskHeartbeat now (rate-limited); throws `TaskOver` once the
 * task is known to be over. */
export function heartbeat() {
  try {
    hostHeartbeat();
  } catch (err) {
    throw new TaskOver(String(err?.payload ?? err));
  }
}

/** The `handle` export for the world: runs `fn(input, ctx)` per task. A handler that
 * returns a plain value is called synchronously; one that returns a promise (an async
 * function) is awaited. */
export function handler(fn) {
  return function handle(input, context) {
    let value;
    try {
      value = JSON.parse(input);
    } catch (err) {
      throw taskError("Task.InvalidInput", `the task input is not JSON: ${err.message}`);
    }
    let result;
    try {
      result = fn(value, {
        activityArn: context.activityArn,
        workerName: context.workerName,
        taskId: context.taskId,
        deadlineMs: context.deadlineMs,
        log,
        heartbeat,
      });
    } catch (err) {
      throw toTaskError(err);
    }
    if (typeof result?.then === "function") {
      return result.then(serialise, (err) => {
        throw toTaskError(err);
      });
    }
    return serialise(result);
  };
}

function taskError(error, cause) {
  return { error, cause };
}

/** The task error for anything a handler throws. */
function toTaskError(err) {
  if (err instanceof TaskError) {
    return taskError(err.error, err.cause);
  }
  if (err === SPIDERMONKEY_OUT_OF_MEMORY) {
    return taskError(OUT_OF_MEMORY, "the JavaScript engine threw \"out of memory\"");
  }
  if (err instanceof Error) {
    const name = err.constructor?.name || err.name || "Error";
    const message = err.message || name;
    const stack = String(err.stack ?? "")
      .split("\n")
      .filter((frame) => frame && !RUNTIME_FRAME.test(frame))
      .join("\n")
      .slice(0, MAX_STACK_CHARS);
    return taskError(name, stack ? `${message}\n\nstack:\n${stack}` : message);
  }
  if (typeof err === "string") {
    return taskError("Error", err);
  }
  if (err !== null && typeof err === "object" && typeof err.error === "string") {
    const cause = err.cause === undefined ? "" : typeof err.cause === "string" ? err.cause : JSON.stringify(err.cause);
    return taskError(err.error, cause);
  }
  return taskError("Error", `the handler threw ${describe(err)}`);
}

/** The task's output text, or a `Worker.InvalidOutput` task error naming what came back. */
function serialise(result) {
  let text;
  try {
    text = JSON.stringify(result);
  } catch (err) {
    throw taskError("Worker.InvalidOutput", `the handler returned ${describe(result)} that cannot be serialised to JSON: ${err.message}`);
  }
  if (text === undefined) {
    throw taskError("Worker.InvalidOutput", `the handler returned ${describe(result)}; return a JSON value (an object, an array, a string, a number, true, false or null)`);
  }
  return text;
}

function describe(value) {
  if (value === undefined) return "undefined";
  if (value === null) return "null";
  if (typeof value === "object") return `an object of class ${value.constructor?.name ?? "Object"}`;
  return `a ${typeof value}`;
}
