"""Example guest in Python: calls an HTTP service and returns what it got.

The fetch contract (guest/examples/README.md), with the Python kit and the standard WASI
HTTP client (`wasi:http/outgoing-handler`) used directly, blocking. Build against the
`handler-http` world:
    componentize-py -d wit -w handler-http componentize app -p guest/examples/python-fetch -p guest/kits/python -o python-fetch.wasm
and allow the service's origin in the activity's `[activity.outbound] allowed_hosts`.
"""
import json
from urllib.parse import urlsplit

import sfn_activity
from componentize_py_types import Err, Ok
from sfn_activity import TaskError
from wit_world.imports import outgoing_handler
from wit_world.imports import wasi_http_types as http
from wit_world.imports.streams import StreamError_Closed

READ_SIZE = 16 * 1024
WRITE_SIZE = 4096


class FetchFailed(Exception):
    """The request did not produce a response; the message names the wasi:http error."""


def error_name(error):
    """`HttpRequestDenied` for an `ErrorCode_HttpRequestDenied`."""
    return type(error).__name__.removeprefix("ErrorCode_")


def fetch(method, url, body=None):
    """Sends one request and returns (status, body bytes). Raises FetchFailed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    headers = [("content-type", b"application/json")] if body is not None else []
    request = http.OutgoingRequest(http.Fields.from_list(headers))
    request.set_method(http.Method_Post() if method == "POST" else http.Method_Get())
    request.set_scheme(http.Scheme_Https() if parts.scheme == "https" else http.Scheme_Http())
    request.set_authority(parts.netloc)
    request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    outgoing = request.body()
    # Send first, then stream the body: the host reads it as the request goes out. A request
    # the activity does not allow fails here, with `HTTP-request-denied`.
    try:
        future = outgoing_handler.handle(request, None)
    except Err as err:
        raise FetchFailed(error_name(err.value)) from None
    if body is not None:
        with outgoing.write() as stream:
            for start in range(0, len(body), WRITE_SIZE):
                stream.blocking_write_and_flush(body[start:start + WRITE_SIZE])
    http.OutgoingBody.finish(outgoing, None)
    result = future.get()
    while result is None:
        future.subscribe().block()
        result = future.get()
    if isinstance(result, Err) or isinstance(result.value, Err):
        error = result.value.value if isinstance(result, Ok) else result.value
        raise FetchFailed(error_name(error))
    response = result.value.value
    status = response.status()
    chunks = []
    incoming = response.consume()  # the body must outlive its stream
    with incoming.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(READ_SIZE))
            except Err as err:
                if isinstance(err.value, StreamError_Closed):
                    break
                raise FetchFailed(f"reading the response body: {err.value}") from None
    return status, b"".join(chunks)


def handle(request, ctx):
    url = request.get("url") if isinstance(request, dict) else None
    if not isinstance(url, str):
        raise TaskError("Fetch.InvalidInput", "`url` must be a string")
    ctx.log("info", f"fetching {url}")
    body = request.get("body")
    try:
        status, data = fetch(request.get("method", "GET"), url,
                             None if body is None else json.dumps(body).encode())
    except (FetchFailed, ValueError) as err:
        raise TaskError("Fetch.RequestFailed", f"{url}: {err}")
    text = data.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    return {"status": status, "body": parsed}


WitWorld = sfn_activity.export(handle)
