"""Example guest in Python for an activity with `instance_reuse` over 1: a price lookup in a
catalogue that is expensive to build, built on the first task an instance runs and kept in
a module global for the later tasks of that instance (as a Lambda function keeps what its
module caches). With a fresh instance per task (the default) every task builds it.

Input: {"sku": "SKU-123", "quantity": N}. Output: {"sku", "unit_price", "total",
"catalogue": "built" or "cached", "tasks_served": tasks this instance has run}.
An unknown SKU fails the task with `Catalogue.UnknownSku`.
"""
import hashlib

import sfn_activity
from sfn_activity import TaskError

CATALOGUE_SIZE = 20_000

# Module globals: what survives between the tasks of one warm instance.
catalogue = None
tasks_served = 0


def build_catalogue():
    """Prices in cents for SKU-0 ... SKU-19999, derived from a hash of each name."""
    prices = {}
    for number in range(CATALOGUE_SIZE):
        sku = f"SKU-{number}"
        digest = hashlib.sha256(sku.encode()).digest()
        prices[sku] = 100 + int.from_bytes(digest[:2], "big") % 9900
    return prices


def handle(task, ctx):
    global catalogue, tasks_served
    tasks_served += 1
    state = "cached"
    if catalogue is None:
        catalogue = build_catalogue()
        state = "built"
    sku = task.get("sku")
    if sku not in catalogue:
        raise TaskError("Catalogue.UnknownSku", f"no such SKU: {sku!r}")
    quantity = int(task.get("quantity", 1))
    unit = catalogue[sku]
    return {
        "sku": sku,
        "unit_price": unit / 100,
        "total": unit * quantity / 100,
        "catalogue": state,
        "tasks_served": tasks_served,
    }


WitWorld = sfn_activity.export(handle)
