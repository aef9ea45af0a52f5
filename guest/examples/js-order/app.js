// Example guest in JavaScript: validates an order and prices it, with the JavaScript kit.
//
// Same contract as every example (guest/examples/README.md). Build (with the esbuild and jco
// of guest/js-toolchain): bundle, then componentize the bundle:
//   esbuild app.js --bundle --format=esm --keep-names --external:'sfn:*' --outfile=bundle.js
//   jco componentize bundle.js --wit ../../../wit -n handler -d http fetch-event -o js-order.wasm
import { handler, heartbeat, TaskError, TaskOver } from "../../kits/js/sfn-activity.js";

/** The input is not a valid order: fails the task with `Order.Invalid`. */
class InvalidOrder extends TaskError {
  constructor(cause) {
    super("Order.Invalid", cause);
  }
}

function count(value, where, allowZero) {
  if (!Number.isSafeInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new InvalidOrder(`${where} must be ${allowZero ? "a non-negative" : "a positive"} integer`);
  }
  return value;
}

function price(order) {
  if (order === null || typeof order !== "object" || Array.isArray(order)) {
    throw new InvalidOrder("input must be a JSON object");
  }
  const { order_id: orderId, items } = order;
  if (typeof orderId !== "string" || orderId === "") {
    throw new InvalidOrder("order_id must be a non-empty string");
  }
  if (!Array.isArray(items) || items.length === 0) {
    throw new InvalidOrder("items must be a non-empty array");
  }
  const discount = count("discount_percent" in order ? order.discount_percent : 0, "discount_percent", true);
  if (discount > 100) {
    throw new InvalidOrder("discount_percent must be between 0 and 100");
  }
  let itemCount = 0;
  let subtotal = 0;
  items.forEach((line, index) => {
    if (line === null || typeof line !== "object" || Array.isArray(line)) {
      throw new InvalidOrder(`items[${index}] must be an object`);
    }
    if (typeof line.sku !== "string" || line.sku === "") {
      throw new InvalidOrder(`items[${index}].sku must be a non-empty string`);
    }
    const quantity = count(line.quantity, `items[${index}].quantity`, false);
    const unit = count(line.unit_price_cents, `items[${index}].unit_price_cents`, true);
    itemCount += quantity;
    subtotal += quantity * unit;
  });
  const discountCents = Math.floor((subtotal * discount) / 100);
  return {
    order_id: orderId,
    lines: items.length,
    item_count: itemCount,
    subtotal_cents: subtotal,
    discount_cents: discountCents,
    total_cents: subtotal - discountCents,
    status: "accepted",
  };
}

export const handle = handler((order, ctx) => {
  const output = price(order);
  if (order.heartbeat === true) {
    // Heartbeat as a long-running handler would; TaskOver means the task is over.
    try {
      heartbeat();
    } catch (err) {
      if (err instanceof TaskOver) throw new TaskError("Order.Cancelled", err.message);
      throw err;
    }
  }
  ctx.log("info", `order ${output.order_id} priced`);
  return output;
});
