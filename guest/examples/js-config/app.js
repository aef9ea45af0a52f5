// Example guest in JavaScript: a price quote from the activity's configuration, read through
// the kit's `config` (wasi:config): `rate` (e.g. a Parameter Store parameter), `region` (a
// plain value) and `api_key` (e.g. a Secrets Manager secret, fetched by the worker; the guest
// never reports it, only its length and checksum).
//
// Input: {"amount": N, "probe": [KEY, ...]}. Output: {"region", "rate", "total" (amount × rate,
// rounded to cents), "api_key": {"length", "checksum"} or null, "present": {KEY: bool}}.
// A `rate` that is not a number fails the task with `Quote.BadRate`.
import { config, handler, TaskError } from "../../kits/js/sfn-activity.js";

/** What the guest says of a secret: its UTF-8 length and byte sum modulo 65521. */
function fingerprint(text) {
  const data = new TextEncoder().encode(text);
  return { length: data.length, checksum: data.reduce((sum, byte) => sum + byte, 0) % 65521 };
}

export const handle = handler((task, ctx) => {
  const rate = config("rate");
  let total = null;
  if (rate !== undefined) {
    const factor = Number(rate);
    if (rate.trim() === "" || Number.isNaN(factor)) throw new TaskError("Quote.BadRate", `rate ${JSON.stringify(rate)} is not a number`);
    total = Math.round(Number(task?.amount ?? 0) * factor * 100) / 100;
  }
  const apiKey = ctx.config("api_key");
  const present = {};
  for (const key of task?.probe ?? []) present[key] = config(key) !== undefined;
  return {
    region: config("region") ?? null,
    rate: rate ?? null,
    total,
    api_key: apiKey === undefined ? null : fingerprint(apiKey),
    present,
  };
});
