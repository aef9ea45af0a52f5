"""sfn_activity: write sfn-wasm-worker task handlers in Python as plain functions.

    import sfn_activity
    from sfn_activity import TaskError

    def handle(order, ctx):
        if not order.get("items"):
            raise TaskError("Order.Invalid", "items must be a non-empty array")
        sfn_activity.log("info", f"pricing {order['order_id']}")
        return {"order_id": order["order_id"], "status": "accepted"}

    WitWorld = sfn_activity.export(handle)

Build with this directory on the module path, against the world the guest needs:
    componentize-py -d wit -w handler componentize app -p . -p KIT_DIR -o app.wasm

What becomes of the handler's result (the task's outcome):
- a returned value → SendTaskSuccess with it serialised as JSON; a value that cannot be
  serialised (a set, an object, NaN) → error `Worker.InvalidOutput` naming its type;
- `raise TaskError(error, cause)` → SendTaskFailure with exactly that error and cause;
- an uncaught `MemoryError` (the guest reached its `memory_limit`) → error
  `Wasm.OutOfMemory`, as for any guest that runs out of memory; the worker names the limit;
- any other uncaught exception → error = the exception's class name (`ValueError`,
  `KeyError`, your own class), cause = its message, then the traceback, innermost call first;
- a task input that is not JSON → error `Task.InvalidInput`.

`sfn_activity.config(key, default=None)` reads the activity's configuration (its
`[activity.config]` values, and secrets the worker fetched from Secrets Manager or Parameter
Store; wasi:config underneath): the value, or `default` for a key the activity does not give.

In the `handler-http` world, `sfn_activity.http` sends HTTP requests (to the origins the
activity's `[activity.outbound] allowed_hosts` lists) and `sfn_activity.aws` calls AWS
services (those its `[activity.aws] services` lists; the worker signs each call: the guest
holds no credential):

    response = sfn_activity.http.get("https://api.example.com/rates")   # .status .headers .body .json()
    data = sfn_activity.aws.s3_get("my-bucket", "input/today.json")     # bytes
    sfn_activity.aws.s3_put("my-bucket", "output/today.json", b"{}")
    sfn_activity.aws.call("sqs", "AmazonSQS.SendMessage", {"QueueUrl": url, "MessageBody": "done"})

A request that gets no response raises `HttpError` (its `.code` names the wasi:http error,
e.g. `HttpRequestDenied`); an AWS error answer raises `AwsError` (`.status`, `.code`,
`.message`).
"""
import json
import os
import traceback
from urllib.parse import quote, urlsplit

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import host
from wit_world.imports import store as _config_store

try:  # the `handler-http` world: wasi:http's client (componentize-py bundles what is
    # imported here, at the top, so these are not imported inside the functions)
    from wit_world.imports import outgoing_handler
    from wit_world.imports import wasi_http_types as _wasi_http
    from wit_world.imports.streams import StreamError_Closed
except ImportError:  # the `handler` world: no HTTP
    outgoing_handler = None

try:  # the `handler` world
    from wit_world.imports.types import TaskContext, TaskError as _WitTaskError
except ImportError:  # the `handler-http` world, which also has wasi:http's `types`
    from wit_world.imports.sfn_activity_types import TaskContext, TaskError as _WitTaskError

__all__ = ["AwsError", "ConfigError", "Context", "HttpError", "Response", "TaskError", "TaskOver",
           "aws", "config", "export", "heartbeat", "http", "log"]

# The error every guest that runs out of memory is failed with (the worker's outcome table).
OUT_OF_MEMORY = "Wasm.OutOfMemory"

# Characters of traceback kept in a cause (Step Functions keeps 32 768 in all).
MAX_TRACEBACK_CHARS = 16_000

_LEVELS = {
    "trace": host.LogLevel.TRACE,
    "debug": host.LogLevel.DEBUG,
    "info": host.LogLevel.INFO,
    "warn": host.LogLevel.WARN,
    "warning": host.LogLevel.WARN,
    "error": host.LogLevel.ERROR,
}


class TaskError(Exception):
    """Fails the task with this `error` (what a state machine's Retry/Catch match) and `cause`."""

    def __init__(self, error, cause=""):
        super().__init__(f"{error}: {cause}" if cause else error)
        self.error = str(error)
        self.cause = str(cause)


class TaskOver(Exception):
    """Raised by `heartbeat()` once Step Functions no longer knows the task (timed out,
    stopped): stop working; nothing will be reported."""


def log(level, message):
    """Writes `message` to the worker's log at `level` (trace, debug, info, warn, error),
    tagged with the activity and task id."""
    host.log(_LEVELS.get(str(level).lower(), host.LogLevel.INFO), str(message))


def heartbeat():
    """Asks the worker to send SendTaskHeartbeat now (rate-limited). Raises `TaskOver` once
    the task is known to be over."""
    try:
        host.heartbeat()
    except Err as err:
        raise TaskOver(str(err.value)) from None


class ConfigError(Exception):
    """The worker could not give a configuration value (wasi:config's error)."""


def config(key, default=None):
    """The activity's configuration value `key` (a plain value or a secret), or `default`
    if the activity gives no such key. Raises `ConfigError` if the worker cannot give it."""
    try:
        value = _config_store.get(str(key))
    except Err as err:
        raise ConfigError(f"{key}: {getattr(err.value, 'value', err.value)}") from None
    return default if value is None else value


class Context:
    """What the handler may know about its task (never the task token)."""

    def __init__(self, context: TaskContext):
        self.activity_arn = context.activity_arn
        self.worker_name = context.worker_name
        self.task_id = context.task_id
        self.deadline_ms = context.deadline_ms

    log = staticmethod(log)
    heartbeat = staticmethod(heartbeat)
    config = staticmethod(config)

    def __repr__(self):
        return f"Context(activity_arn={self.activity_arn!r}, task_id={self.task_id!r})"


def export(handle):
    """The `WitWorld` class componentize-py exports, running `handle(input, ctx)` per task."""

    class WitWorld(wit_world.WitWorld):
        def handle(self, input: str, context: TaskContext) -> str:
            return _run(handle, input, context)

    return WitWorld


def _run(handle, input, context):
    try:
        value = json.loads(input)
    except ValueError as err:
        raise Err(_WitTaskError(error="Task.InvalidInput", cause=f"the task input is not JSON: {err}"))
    try:
        result = handle(value, Context(context))
    except TaskError as err:
        raise Err(_WitTaskError(error=err.error, cause=err.cause))
    except MemoryError as err:  # the worker names the limit in the cause
        raise Err(_WitTaskError(error=OUT_OF_MEMORY, cause=_cause(err)))
    except Exception as err:  # the author's uncaught exception: its class names the error
        raise Err(_WitTaskError(error=type(err).__name__, cause=_cause(err)))
    try:
        return json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise Err(_WitTaskError(
            error="Worker.InvalidOutput",
            cause=f"the handler returned a {type(result).__name__} that cannot be serialised to JSON: {err}",
        ))


def _cause(err):
    """The exception's message, then its traceback with the innermost call first."""
    frames = traceback.extract_tb(err.__traceback__)[1:]  # without _run's own frame
    lines = [f'  File "{f.filename}", line {f.lineno}, in {f.name}' + (f"\n    {f.line}" if f.line else "")
             for f in reversed(frames)]
    text = "\n".join(lines)
    if len(text) > MAX_TRACEBACK_CHARS:
        text = text[:MAX_TRACEBACK_CHARS] + "\n  …"
    message = str(err) or type(err).__name__
    return f"{message}\n\nTraceback (innermost call first):\n{text}" if text else message


# --- HTTP and AWS (the `handler-http` world) ---------------------------------------------

_READ_SIZE = 16 * 1024
_WRITE_SIZE = 4096


class HttpError(Exception):
    """A request that got no response; `code` names the wasi:http error (`HttpRequestDenied`,
    `DestinationIpProhibited`, `ConnectionTimeout`...)."""

    def __init__(self, code, detail=""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class Response:
    """A response: `status` (int), `headers` (dict, lowercase names), `body` (bytes)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def text(self):
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The body parsed as JSON."""
        return json.loads(self.body)

    def __repr__(self):
        return f"Response(status={self.status}, {len(self.body)} bytes)"


def _error_code(error):
    return type(error).__name__.removeprefix("ErrorCode_")


def _method(http_types, method):
    known = {"GET": "Get", "HEAD": "Head", "POST": "Post", "PUT": "Put", "DELETE": "Delete",
             "CONNECT": "Connect", "OPTIONS": "Options", "TRACE": "Trace", "PATCH": "Patch"}
    name = known.get(method.upper())
    if name is None:
        return http_types.Method_Other(method)
    return getattr(http_types, f"Method_{name}")()


class _Http:
    """HTTP through wasi:http, blocking (see the module's doc)."""

    def request(self, method, url, headers=None, body=None):
        """Sends one request; returns its `Response`. `body`: bytes, str or None."""
        if outgoing_handler is None:
            raise HttpError("HttpRequestDenied", "build the guest against the handler-http world")
        wasi_http = _wasi_http
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http(s) URL")
        if isinstance(body, str):
            body = body.encode()
        fields = [(str(name).lower(), str(value).encode()) for name, value in (headers or {}).items()]
        request = wasi_http.OutgoingRequest(wasi_http.Fields.from_list(fields))
        request.set_method(_method(wasi_http, method))
        request.set_scheme(wasi_http.Scheme_Https() if parts.scheme == "https" else wasi_http.Scheme_Http())
        request.set_authority(parts.netloc)
        request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        outgoing = request.body()
        try:  # a request the activity does not allow fails here
            future = outgoing_handler.handle(request, None)
        except Err as err:
            raise HttpError(_error_code(err.value)) from None
        if body:
            with outgoing.write() as stream:
                for start in range(0, len(body), _WRITE_SIZE):
                    stream.blocking_write_and_flush(body[start:start + _WRITE_SIZE])
        wasi_http.OutgoingBody.finish(outgoing, None)
        result = future.get()
        while result is None:
            future.subscribe().block()
            result = future.get()
        if isinstance(result, Err) or isinstance(result.value, Err):
            error = result.value.value if isinstance(result, Ok) else result.value
            raise HttpError(_error_code(error))
        response = result.value.value
        headers = {}
        for name, value in response.headers().entries():
            headers[name.lower()] = value.decode("utf-8", "replace")
        chunks = []
        incoming = response.consume()  # the body must outlive its stream
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(_READ_SIZE))
                except Err as err:
                    if isinstance(err.value, StreamError_Closed):
                        break
                    raise HttpError("HttpProtocolError", f"reading the response body: {err.value}") from None
        return Response(response.status(), headers, b"".join(chunks))

    def get(self, url, headers=None):
        """`request("GET", url, headers)`."""
        return self.request("GET", url, headers)

    def post(self, url, body=None, headers=None):
        """`request("POST", url, headers, body)`; a dict or list body is sent as JSON."""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            headers = {"content-type": "application/json", **(headers or {})}
        return self.request("POST", url, headers, body)


http = _Http()


class AwsError(Exception):
    """An AWS service answered with an error: `status`, `code` (e.g. `NoSuchKey`,
    `AWS.SimpleQueueService.NonExistentQueue`) and `message`."""

    def __init__(self, status, code, message):
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message


# The JSON protocol version of the JSON-protocol services (their API reference gives it).
_JSON_VERSIONS = {"sqs": "1.0", "dynamodb": "1.0", "states": "1.0", "kinesis": "1.1",
                  "secretsmanager": "1.1", "ssm": "1.1", "kms": "1.1", "logs": "1.1",
                  "events": "1.1", "lambda": "1.1"}


class _Aws:
    """AWS calls the worker signs (see the module's doc). The region is the activity's
    (`AWS_REGION`, which the worker sets)."""

    def _region(self):
        region = os.environ.get("AWS_REGION")
        if not region:
            raise AwsError(0, "NoRegion", "the activity grants no AWS service ([activity.aws])")
        return region

    def call(self, service, target, payload=None, json_version=None):
        """Calls a JSON-protocol service (`target` is the `X-Amz-Target`, e.g.
        `AmazonSQS.SendMessage`); returns the answer parsed. Raises `AwsError`."""
        version = json_version or _JSON_VERSIONS.get(service, "1.0")
        response = http.request(
            "POST",
            f"https://{service}.{self._region()}.amazonaws.com/",
            {"content-type": f"application/x-amz-json-{version}", "x-amz-target": target},
            json.dumps(payload or {}),
        )
        if response.status >= 300:
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            code = str(answer.get("__type", "")).rsplit("#", 1)[-1] or f"HTTP{response.status}"
            message = answer.get("message") or answer.get("Message") or response.text()[:300]
            raise AwsError(response.status, code, message)
        return response.json() if response.body else {}

    def _s3_url(self, bucket, key):
        return f"https://{bucket}.s3.{self._region()}.amazonaws.com/{quote(key)}"

    def _s3_error(self, response):
        text = response.text()
        code = text.split("<Code>", 1)[1].split("</Code>", 1)[0] if "<Code>" in text else f"HTTP{response.status}"
        message = text.split("<Message>", 1)[1].split("</Message>", 1)[0] if "<Message>" in text else text[:300]
        return AwsError(response.status, code, message)

    def s3_get(self, bucket, key):
        """The bytes of object `key` in `bucket`. Raises `AwsError` (`NoSuchKey`...)."""
        response = http.request("GET", self._s3_url(bucket, key))
        if response.status >= 300:
            raise self._s3_error(response)
        return response.body

    def s3_put(self, bucket, key, body, content_type="application/octet-stream"):
        """Writes `body` (bytes or str) as object `key` in `bucket`. Raises `AwsError`."""
        response = http.request("PUT", self._s3_url(bucket, key), {"content-type": content_type}, body)
        if response.status >= 300:
            raise self._s3_error(response)


aws = _Aws()
