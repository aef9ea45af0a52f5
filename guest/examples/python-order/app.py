"""Example guest in Python: validates an order and prices it, with the Python kit.

Same contract as every example (guest/examples/README.md). Build (the kit's directory on the
module path):
    componentize-py -d wit -w handler componentize app -p guest/examples/python-order -p guest/kits/python -o python-order.wasm
"""
import sfn_activity
from sfn_activity import TaskError, TaskOver


class InvalidOrder(TaskError):
    """The input is not a valid order: fails the task with `Order.Invalid`."""

    def __init__(self, cause):
        super().__init__("Order.Invalid", cause)


def positive_int(value, where, allow_zero):
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        kind = "a non-negative" if allow_zero else "a positive"
        raise InvalidOrder(f"{where} must be {kind} integer")
    return value


def price(order):
    if not isinstance(order, dict):
        raise InvalidOrder("input must be a JSON object")
    order_id = order.get("order_id")
    if not isinstance(order_id, str) or not order_id:
        raise InvalidOrder("order_id must be a non-empty string")
    items = order.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidOrder("items must be a non-empty array")
    discount = positive_int(order.get("discount_percent", 0), "discount_percent", True)
    if discount > 100:
        raise InvalidOrder("discount_percent must be between 0 and 100")
    item_count = subtotal = 0
    for index, line in enumerate(items):
        if not isinstance(line, dict):
            raise InvalidOrder(f"items[{index}] must be an object")
        sku = line.get("sku")
        if not isinstance(sku, str) or not sku:
            raise InvalidOrder(f"items[{index}].sku must be a non-empty string")
        quantity = positive_int(line.get("quantity"), f"items[{index}].quantity", False)
        unit = positive_int(line.get("unit_price_cents"), f"items[{index}].unit_price_cents", True)
        item_count += quantity
        subtotal += quantity * unit
    discount_cents = subtotal * discount // 100
    return {
        "order_id": order_id,
        "lines": len(items),
        "item_count": item_count,
        "subtotal_cents": subtotal,
        "discount_cents": discount_cents,
        "total_cents": subtotal - discount_cents,
        "status": "accepted",
    }


def handle(order, ctx):
    output = price(order)
    if order.get("heartbeat") is True:
        # Heartbeat as a long-running handler would; TaskOver means the task is over.
        try:
            sfn_activity.heartbeat()
        except TaskOver as over:
            raise TaskError("Order.Cancelled", str(over))
    ctx.log("info", f"order {output['order_id']} priced")
    return output


WitWorld = sfn_activity.export(handle)
