"""Test guest for the Python kit: does what the input's "do" asks, so the tests can check how
each way a handler ends becomes the task's outcome."""
import sfn_activity
from sfn_activity import TaskError


class OrderRejected(Exception):
    """An author's own exception class: its name must become the task's error."""


def check_sku(sku):
    if not sku:
        raise ValueError("bad sku")
    return sku


def allocate_until_refused():
    blocks = []
    while True:
        blocks.append(bytearray(1 << 20))


def handle(request, ctx):
    do = request.get("do") if isinstance(request, dict) else None
    if do == "raise":
        check_sku("")
    if do == "raise-custom":
        raise OrderRejected("customer is blocked")
    if do == "task-error":
        raise TaskError("Order.Invalid", "items must be a non-empty array")
    if do == "unserialisable":
        return {"tags": {"a", "b"}}
    if do == "nan":
        return float("nan")
    if do == "allocate":  # until its memory_limit: an uncaught MemoryError
        return {"blocks": len(allocate_until_refused())}
    if do == "allocate-caught":  # the handler turns the MemoryError into its own error
        try:
            allocate_until_refused()
        except MemoryError:
            raise TaskError("Order.TooLarge", "the order does not fit in memory")
    if do == "heartbeat":
        sfn_activity.heartbeat()
        return {"beat": True}
    if do == "log":
        ctx.log("info", "hello from the kit")
        return {"logged": True}
    return {"echo": request, "task_id": ctx.task_id, "activity_arn": ctx.activity_arn}


WitWorld = sfn_activity.export(handle)
