// Test guest in TypeScript: every declaration of the JavaScript kit (sfn-activity.d.ts) in
// use, type-checked by `tsc --noEmit` (tests/guest_kits.rs) and run after esbuild strips the
// types. Input: {"op": "config", "keys": [...]} → {"values": {KEY: value or null}, "deadline_ok"};
// {"op": "fail"} → Kit.Failed; {"op": "fetch", "url": U} → the status, or the HttpError's
// code; {"op": "s3", "bucket", "key"} → the object's size, or the AwsError's code.
import {
  aws,
  AwsError,
  config,
  ConfigError,
  handler,
  heartbeat,
  http,
  HttpError,
  log,
  TaskError,
  TaskOver,
  type Context,
  type Json,
} from "../../kits/js/sfn-activity.js";

type Request =
  | { op: "config"; keys: string[] }
  | { op: "fail" }
  | { op: "fetch"; url: string }
  | { op: "s3"; bucket: string; key: string };

function configValues(keys: string[], ctx: Context): { [key: string]: Json } {
  const values: { [key: string]: Json } = {};
  for (const key of keys) {
    try {
      values[key] = ctx.config(key) ?? config(key, null);
    } catch (err) {
      if (err instanceof ConfigError) throw new TaskError("Kit.ConfigUnavailable", err.message);
      throw err;
    }
  }
  return values;
}

export const handle = handler(async (request: Request, ctx: Context): Promise<Json> => {
  log("debug", `ts-kit ${request.op} in ${ctx.taskId}`);
  switch (request.op) {
    case "config": {
      try {
        heartbeat();
      } catch (err) {
        if (err instanceof TaskOver) throw new TaskError("Kit.Over", err.message);
      }
      return { values: configValues(request.keys, ctx), deadline_ok: ctx.deadlineMs > 0n };
    }
    case "fail":
      throw new TaskError("Kit.Failed", "asked to fail");
    case "fetch":
      try {
        const response = await http.get(request.url, { headers: { accept: "application/json" } });
        return { status: response.status, bytes: response.body.length };
      } catch (err) {
        if (err instanceof HttpError) return { error: err.code };
        throw err;
      }
    case "s3":
      try {
        return { bytes: (await aws.s3Get(request.bucket, request.key)).length };
      } catch (err) {
        if (err instanceof AwsError) return { error: err.code, status: err.status };
        throw err;
      }
  }
});
