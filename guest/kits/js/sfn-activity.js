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
//
// `config(key, fallback)` reads the activity's configuration (its `[activity.config]` values,
// and secrets the worker fetched from Secrets Manager or Parameter Store; wasi:config
// underneath): the value, or `fallback` (default `undefined`) for a key it does not give.
//
//   const apiKey = config("api_key");
//
// In the `handler-http` world, `http` sends HTTP requests (to the origins the activity's
// `[activity.outbound] allowed_hosts` lists) and `aws` calls AWS services (those its
// `[activity.aws] services` lists; the worker signs each call: the guest holds no
// credential):
//
//   const rates = await http.get("https://api.example.com/rates");   // .status .headers .body .text() .json()
//   const data = await aws.s3Get("my-bucket", "input/today.json");   // Uint8Array
//   await aws.s3Put("my-bucket", "output/today.json", JSON.stringify(result));
//   await aws.call("sqs", "AmazonSQS.SendMessage", { QueueUrl: url, MessageBody: "done" });
//
// The region of the `aws` calls is the `region` option, else the running task's activity
// ARN's (the worker's region, which is `[activity.aws] region` unless that sets another).
// A request that gets no response throws `HttpError`; an AWS error answer throws `AwsError`
// (`.status`, `.code`, `.message`).
import { heartbeat as hostHeartbeat, log as hostLog } from "sfn:activity/host@0.1.0";
import { get as configGet } from "wasi:config/store@0.2.0-rc.1";

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

/** The worker could not give a configuration value (wasi:config's error). */
export class ConfigError extends Error {}

/** The activity's configuration value `key` (a plain value or a secret), or `fallback` if
 * the activity gives no such key; throws `ConfigError` if the worker cannot give it. */
export function config(key, fallback = undefined) {
  let value;
  try {
    value = configGet(String(key));
  } catch (err) {
    const detail = err?.payload?.val ?? err?.payload ?? err;
    throw new ConfigError(`${key}: ${String(detail)}`);
  }
  return value ?? fallback;
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
    currentRegion = String(context.activityArn).split(":")[3] || undefined;
    try {
      result = fn(value, {
        activityArn: context.activityArn,
        workerName: context.workerName,
        taskId: context.taskId,
        deadlineMs: context.deadlineMs,
        log,
        heartbeat,
        config,
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

// --- HTTP and AWS (the `handler-http` world) -------------------------------------------

/** The running task's region (from its activity ARN): the default of the `aws` calls. */
let currentRegion;

/** A request that got no response (denied, unreachable, timed out...). */
export class HttpError extends Error {
  constructor(message) {
    super(message);
    this.code = message;
  }
}

/** An AWS service answered with an error. */
export class AwsError extends Error {
  constructor(status, code, message) {
    super(`${code} (${status}): ${message}`);
    this.status = status;
    this.code = code;
    this.message = message;
  }
}

/** HTTP through `fetch` (wasi:http). Each call resolves to `{status, headers, body}` with
 * `body` a Uint8Array, and `text()` and `json()`. */
export const http = {
  async request(method, url, { headers, body } = {}) {
    let response;
    let bytes;
    try {
      response = await fetch(url, { method, headers, body });
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch (err) {
      throw new HttpError(String(err?.message ?? err));
    }
    const answer = {
      status: response.status,
      headers: Object.fromEntries(response.headers.entries()),
      body: bytes,
      text: () => new TextDecoder().decode(bytes),
      json: () => JSON.parse(new TextDecoder().decode(bytes)),
    };
    return answer;
  },
  get(url, options = {}) {
    return this.request("GET", url, options);
  },
  post(url, body, options = {}) {
    if (body !== null && typeof body === "object" && !(body instanceof Uint8Array)) {
      const headers = { "content-type": "application/json", ...(options.headers ?? {}) };
      return this.request("POST", url, { headers, body: JSON.stringify(body) });
    }
    return this.request("POST", url, { ...options, body });
  },
};

/** The JSON protocol version of the JSON-protocol services (their API reference gives it). */
const JSON_VERSIONS = {
  sqs: "1.0", dynamodb: "1.0", states: "1.0", kinesis: "1.1", secretsmanager: "1.1",
  ssm: "1.1", kms: "1.1", logs: "1.1", events: "1.1", lambda: "1.1",
};

function regionOf(options) {
  const region = options.region ?? currentRegion;
  if (!region) throw new AwsError(0, "NoRegion", "no region: pass { region }");
  return region;
}

function s3Url(bucket, key, options) {
  const path = String(key).split("/").map(encodeURIComponent).join("/");
  return `https://${bucket}.s3.${regionOf(options)}.amazonaws.com/${path}`;
}

function s3Error(response) {
  const text = response.text();
  const tag = (name) => text.match(new RegExp(`<${name}>([^<]*)</${name}>`))?.[1];
  return new AwsError(response.status, tag("Code") ?? `HTTP${response.status}`, tag("Message") ?? text.slice(0, 300));
}

/** AWS calls the worker signs. */
export const aws = {
  /** Calls a JSON-protocol service (`target` is the `X-Amz-Target`, e.g.
   * `AmazonSQS.SendMessage`); resolves to the answer parsed. */
  async call(service, target, payload = {}, options = {}) {
    const version = options.jsonVersion ?? JSON_VERSIONS[service] ?? "1.0";
    const response = await http.request("POST", `https://${service}.${regionOf(options)}.amazonaws.com/`, {
      headers: { "content-type": `application/x-amz-json-${version}`, "x-amz-target": target },
      body: JSON.stringify(payload),
    });
    if (response.status >= 300) {
      let answer = {};
      try {
        answer = response.json();
      } catch {}
      const code = String(answer.__type ?? "").split("#").pop() || `HTTP${response.status}`;
      throw new AwsError(response.status, code, answer.message ?? answer.Message ?? response.text().slice(0, 300));
    }
    return response.body.length ? response.json() : {};
  },
  /** The bytes of object `key` in `bucket`. */
  async s3Get(bucket, key, options = {}) {
    const response = await http.request("GET", s3Url(bucket, key, options));
    if (response.status >= 300) throw s3Error(response);
    return response.body;
  },
  /** Writes `body` (a string or Uint8Array) as object `key` in `bucket`. */
  async s3Put(bucket, key, body, options = {}) {
    const headers = { "content-type": options.contentType ?? "application/octet-stream" };
    const response = await http.request("PUT", s3Url(bucket, key, options), { headers, body });
    if (response.status >= 300) throw s3Error(response);
  },
};
