// Example guest in JavaScript: calls an HTTP service and returns what it got, with the
// JavaScript kit.
//
// The fetch contract (guest/examples/README.md) with the standard `fetch`, which jco's
// runtime implements over wasi:http. Bundle, then build against the `handler-http` world,
// keeping the HTTP client (no `-d http`):
//   esbuild app.js --bundle --format=esm --keep-names --external:'sfn:*' --outfile=bundle.js
//   jco componentize bundle.js --wit ../../../wit -n handler-http -d fetch-event -o js-fetch.wasm
// and allow the service's origin in the activity's `[activity.outbound] allowed_hosts`.
import { handler, TaskError } from "../../kits/js/sfn-activity.js";

export const handle = handler(async (request, ctx) => {
  const url = request?.url;
  if (typeof url !== "string") {
    throw new TaskError("Fetch.InvalidInput", "`url` must be a string");
  }
  ctx.log("info", `fetching ${url}`);
  const init = { method: request.method ?? "GET" };
  if (request.body !== undefined) {
    init.body = JSON.stringify(request.body);
    init.headers = { "content-type": "application/json" };
  }
  let response;
  let text;
  try {
    response = await fetch(url, init);
    text = await response.text();
  } catch (err) {
    throw new TaskError("Fetch.RequestFailed", `${url}: ${err?.message ?? err}`);
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: response.status, body };
});
