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
"""
import json
import traceback

import wit_world
from componentize_py_types import Err
from wit_world.imports import host

try:  # the `handler` world
    from wit_world.imports.types import TaskContext, TaskError as _WitTaskError
except ImportError:  # the `handler-http` world, which also has wasi:http's `types`
    from wit_world.imports.sfn_activity_types import TaskContext, TaskError as _WitTaskError

__all__ = ["Context", "TaskError", "TaskOver", "export", "heartbeat", "log"]

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


class Context:
    """What the handler may know about its task (never the task token)."""

    def __init__(self, context: TaskContext):
        self.activity_arn = context.activity_arn
        self.worker_name = context.worker_name
        self.task_id = context.task_id
        self.deadline_ms = context.deadline_ms

    log = staticmethod(log)
    heartbeat = staticmethod(heartbeat)

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
