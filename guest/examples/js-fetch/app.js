// Example guest in JavaScript: calls an HTTP service and returns what it got.
//
// The fetch contract (guest/examples/README.md) with the standard `fetch`, which jco's
// runtime implements over wasi:http. Build against the `handler-http` world, keeping the
// HTTP client (no `-d http`):
//   jco componentize app.js --wit ../../../wit -n handler-http -d fetch-event -o js-fetch.wasm
// and allow the service's origin in the activity's `allowed_outbound_hosts`.
import { log } from "sfn:activity/host@0.1.0";

export async function handle(input, context) {
  const request = JSON.parse(input);
  const url = request.url;
  if (typeof url !== "string") {
    throw { error: "Fetch.InvalidInput", cause: "`url` must be a string" };
  }
  log("info", `fetching ${url}`);
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
    throw { error: "Fetch.RequestFailed", cause: `${url}: ${err?.message ?? err}` };
  }
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return JSON.stringify({ status: response.status, body });
}
