"""Example guest in Python: calls an HTTP service and returns what it got.

The fetch contract (guest/examples/README.md), with the Python kit's HTTP client
(`sfn_activity.http`, over the standard WASI HTTP client `wasi:http/outgoing-handler`,
blocking). Build against the `handler-http` world:
    componentize-py -d wit -w handler-http componentize app -p guest/examples/python-fetch -p guest/kits/python -o python-fetch.wasm
and allow the service's origin in the activity's `[activity.outbound] allowed_hosts`.
"""
import json

import sfn_activity
from sfn_activity import HttpError, TaskError


def handle(request, ctx):
    url = request.get("url") if isinstance(request, dict) else None
    if not isinstance(url, str):
        raise TaskError("Fetch.InvalidInput", "`url` must be a string")
    ctx.log("info", f"fetching {url}")
    body = request.get("body")
    headers = {"content-type": "application/json"} if body is not None else None
    try:
        response = sfn_activity.http.request(
            request.get("method", "GET"), url, headers, None if body is None else json.dumps(body))
    except (HttpError, ValueError) as err:
        raise TaskError("Fetch.RequestFailed", f"{url}: {err}")
    try:
        parsed = response.json()
    except ValueError:
        parsed = response.text()
    return {"status": response.status, "body": parsed}


WitWorld = sfn_activity.export(handle)
