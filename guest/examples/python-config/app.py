"""Example guest in Python: a price quote from the activity's configuration, read through
the kit's `config` (wasi:config): `rate` (e.g. a Parameter Store parameter), `region` (a
plain value) and `api_key` (e.g. a Secrets Manager secret, fetched by the worker; the guest
never reports it, only its length and checksum).

Input: {"amount": N, "probe": [KEY, ...]}. Output: {"region", "rate", "total" (amount × rate,
rounded to cents), "api_key": {"length", "checksum"} or null, "present": {KEY: bool}}.
A `rate` that is not a number fails the task with `Quote.BadRate`.
"""
import sfn_activity
from sfn_activity import TaskError


def fingerprint(text):
    """What the guest says of a secret: its UTF-8 length and byte sum modulo 65521."""
    data = text.encode()
    return {"length": len(data), "checksum": sum(data) % 65521}


def handle(task, ctx):
    rate = sfn_activity.config("rate")
    total = None
    if rate is not None:
        try:
            total = round(float(task.get("amount", 0)) * float(rate), 2)
        except ValueError:
            raise TaskError("Quote.BadRate", f"rate {rate!r} is not a number")
    api_key = ctx.config("api_key")
    return {
        "region": sfn_activity.config("region"),
        "rate": rate,
        "total": total,
        "api_key": fingerprint(api_key) if api_key is not None else None,
        "present": {key: sfn_activity.config(key) is not None for key in task.get("probe", [])},
    }


WitWorld = sfn_activity.export(handle)
