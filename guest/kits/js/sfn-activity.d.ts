// Type declarations of sfn-activity.js (see its header for what each does), for handlers
// written in TypeScript: esbuild strips the types when it bundles, and `tsc --noEmit` checks
// them.
//
//   import { handler, TaskError, type Context } from "./sfn-activity.js";
//
//   interface Order { order_id: string; items: { sku: string; quantity: number }[] }
//
//   export const handle = handler(async (order: Order, ctx: Context) => {
//     if (!order.items.length) throw new TaskError("Order.Invalid", "no items");
//     return { order_id: order.order_id, status: "accepted" };
//   });

/** A value JSON can hold: what a handler returns. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Severity of a log line (`"warning"` is taken as `"warn"`). */
export type LogLevel = "trace" | "debug" | "info" | "warn" | "warning" | "error";

/** What a handler may know about its task (never the task token). */
export interface Context {
  /** ARN of the activity the task came from. */
  readonly activityArn: string;
  /** The worker's name, as sent on GetActivityTask. */
  readonly workerName: string;
  /** A stable id for log correlation, derived from (but not revealing) the task token. */
  readonly taskId: string;
  /** Milliseconds left before the worker stops the task with `Wasm.Timeout`. */
  readonly deadlineMs: bigint;
  /** Writes `message` to the worker's log, tagged with the activity and task id. */
  log(level: LogLevel, message: string): void;
  /** Asks the worker to heartbeat the task now; throws `TaskOver` once the task is over. */
  heartbeat(): void;
  /** The activity's configuration value `key` ([`config`]). */
  config: typeof config;
}

/** A handler: the task's parsed JSON input and its context to a JSON value (or a promise of
 * one). */
export type Handler<Input = unknown, Output = unknown> = (input: Input, ctx: Context) => Output | Promise<Output>;

/** The `handle` export of the component: the world's signature (input text, task context). */
export type HandleExport = (input: string, context: unknown) => string | Promise<string>;

/** Wraps `fn` as the component's `handle` export. */
export function handler<Input = any, Output = unknown>(fn: Handler<Input, Output>): HandleExport;

/** Fails the task with this `error` (what a state machine's Retry/Catch match) and `cause`. */
export class TaskError extends Error {
  constructor(error: string, cause?: string);
  /** The error name, e.g. `Order.Invalid`. */
  readonly error: string;
  /** The explanation. */
  readonly cause: string;
}

/** Thrown by `heartbeat()` once Step Functions no longer knows the task: stop working. */
export class TaskOver extends Error {}

/** The worker could not give a configuration value. */
export class ConfigError extends Error {}

/** Writes `message` to the worker's log at `level`. */
export function log(level: LogLevel, message: string): void;

/** Asks the worker to send SendTaskHeartbeat now (rate-limited); throws `TaskOver` once the
 * task is over. */
export function heartbeat(): void;

/** The activity's configuration value `key` (an `[activity.config]` value or a secret the
 * worker fetched), or `fallback` if the activity gives no such key; throws `ConfigError` if
 * the worker cannot give it. */
export function config(key: string): string | undefined;
export function config<T>(key: string, fallback: T): string | T;

/** A request that got no response (denied, unreachable, timed out...). */
export class HttpError extends Error {
  constructor(message: string);
  /** The wasi:http error. */
  readonly code: string;
}

/** An AWS service answered with an error. */
export class AwsError extends Error {
  constructor(status: number, code: string, message: string);
  /** The HTTP status. */
  readonly status: number;
  /** The error code, e.g. `NoSuchKey`, `ResourceNotFoundException`. */
  readonly code: string;
}

/** A response. */
export interface HttpResponse {
  /** Its status code. */
  readonly status: number;
  /** Its headers, by lowercase name. */
  readonly headers: Record<string, string>;
  /** Its body. */
  readonly body: Uint8Array;
  /** The body as UTF-8 text. */
  text(): string;
  /** The body parsed as JSON. */
  json(): any;
}

/** A request's headers and body. */
export interface RequestOptions {
  headers?: Record<string, string>;
  body?: string | Uint8Array;
}

/** HTTP through `fetch` (wasi:http; the `handler-http` world), to the origins the activity
 * allows. */
export const http: {
  request(method: string, url: string, options?: RequestOptions): Promise<HttpResponse>;
  get(url: string, options?: RequestOptions): Promise<HttpResponse>;
  /** An object or array body is sent as JSON. */
  post(url: string, body?: Json | string | Uint8Array, options?: RequestOptions): Promise<HttpResponse>;
};

/** Where an AWS call goes. */
export interface AwsOptions {
  /** Default: the task's activity ARN's region. */
  region?: string;
  /** The service's JSON protocol version (`"1.0"`, `"1.1"`); known services have theirs. */
  jsonVersion?: string;
}

/** AWS calls the worker signs (the services the activity's `[activity.aws]` lists). */
export const aws: {
  /** Calls a JSON-protocol operation (`target` is its `X-Amz-Target`, e.g.
   * `AmazonSQS.SendMessage`); resolves to the answer parsed. */
  call(service: string, target: string, payload?: object, options?: AwsOptions): Promise<any>;
  /** The bytes of object `key` in `bucket`. */
  s3Get(bucket: string, key: string, options?: AwsOptions): Promise<Uint8Array>;
  /** Writes `body` as object `key` in `bucket`. */
  s3Put(bucket: string, key: string, body: string | Uint8Array, options?: AwsOptions & { contentType?: string }): Promise<void>;
};
