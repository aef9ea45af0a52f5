//! Example guest: validates an order and prices it (see guest/examples/README.md for the
//! contract every example language implements).

use serde::Deserialize;
use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};

/// One order line as the input carries it.
#[derive(Deserialize)]
struct Line {
    sku: String,
    quantity: u64,
    unit_price_cents: u64,
}

/// The task input.
#[derive(Deserialize)]
struct Order {
    order_id: String,
    items: Vec<Line>,
    #[serde(default)]
    discount_percent: u64,
    /// Heartbeat before pricing, as a long-running handler would.
    #[serde(default)]
    heartbeat: bool,
}

fn invalid(cause: impl Into<String>) -> TaskError {
    TaskError::new("Order.Invalid", cause)
}

fn handle(input: Value, ctx: &Context) -> Result<Value, TaskError> {
    let order: Order = serde_json::from_value(input).map_err(|err| invalid(err.to_string()))?;
    if order.order_id.is_empty() {
        return Err(invalid("order_id must be a non-empty string"));
    }
    if order.items.is_empty() {
        return Err(invalid("items must be a non-empty array"));
    }
    if order.discount_percent > 100 {
        return Err(invalid("discount_percent must be between 0 and 100"));
    }
    let mut item_count = 0u64;
    let mut subtotal_cents = 0u64;
    for (index, line) in order.items.iter().enumerate() {
        if line.sku.is_empty() {
            return Err(invalid(format!("items[{index}].sku must be a non-empty string")));
        }
        if line.quantity == 0 {
            return Err(invalid(format!("items[{index}].quantity must be a positive integer")));
        }
        item_count += line.quantity;
        subtotal_cents += line.quantity * line.unit_price_cents;
    }
    let discount_cents = subtotal_cents * order.discount_percent / 100;
    if order.heartbeat {
        // As a long-running handler would; an error means the task is over.
        ctx.heartbeat().map_err(|reason| TaskError::new("Order.Cancelled", reason))?;
    }
    ctx.info(&format!("order {} priced", order.order_id));
    Ok(json!({
        "order_id": order.order_id,
        "lines": order.items.len(),
        "item_count": item_count,
        "subtotal_cents": subtotal_cents,
        "discount_cents": discount_cents,
        "total_cents": subtotal_cents - discount_cents,
        "status": "accepted",
    }))
}

export_handler!(handle);
