"""{{name}}: a sfn-wasm-worker task handler in Python (see README.md)."""
import sfn_activity
from sfn_activity import TaskError


def handle(task, ctx):
    name = task.get("name") if isinstance(task, dict) else None
    if not isinstance(name, str) or not name:
        raise TaskError("Greeting.InvalidInput", "`name` must be a non-empty string")
    ctx.log("info", f"greeting {name}")
    return {"greeting": f"hello, {name}", "task_id": ctx.task_id}


WitWorld = sfn_activity.export(handle)
