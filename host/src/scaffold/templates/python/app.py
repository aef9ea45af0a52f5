"""{{name}}: a sfn-wasm-worker task handler in Python (see README.md)."""
import sfn_activity
from sfn_activity import TaskError


def handle(task, ctx):
    name = task.get("name") if isinstance(task, dict) else None
    if not isinstance(name, str) or not name:
        raise TaskError("Greeting.InvalidInput", "`name` must be a non-empty string")
    ctx.log("info", f"greeting {name}")
    # A value of the activity's [activity.config] (or `invoke --config-value greeting=hi`).
    greeting = sfn_activity.config("greeting", "hello")
    return {"greeting": f"{greeting}, {name}", "task_id": ctx.task_id}


WitWorld = sfn_activity.export(handle)
