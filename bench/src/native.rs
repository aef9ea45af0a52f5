//! The order contract (guest/examples/README.md) as a native Rust function, and a
//! bench-only [`TaskHandler`] that runs it in-process: the ceiling for the worker's loop.

use serde_json::{json, Value};
use sfn_wasm_worker::sandbox::outcome::Outcome;
use sfn_wasm_worker::sandbox::{
    Grants, HandlerFuture, Task, TaskEnd, TaskHandler, TaskLimits, TaskStats,
};
use std::time::Instant;

/// Prices an order exactly as the example guests do: `Ok(output JSON)` or
/// `Err(cause)` for `Order.Invalid`.
pub fn price_order(input: &str) -> Result<String, String> {
    let order: Value =
        serde_json::from_str(input).map_err(|err| format!("input is not JSON: {err}"))?;
    let order_id = order["order_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or("order_id must be a non-empty string")?;
    let items = order["items"]
        .as_array()
        .filter(|items| !items.is_empty())
        .ok_or("items must be a non-empty array")?;
    let discount = match order.get("discount_percent") {
        None => 0,
        Some(value) => value
            .as_u64()
            .filter(|d| *d <= 100)
            .ok_or("discount_percent must be between 0 and 100")?,
    };
    let (mut item_count, mut subtotal) = (0u64, 0u64);
    for (index, line) in items.iter().enumerate() {
        if line["sku"].as_str().is_none_or(str::is_empty) {
            return Err(format!("items[{index}].sku must be a non-empty string"));
        }
        let quantity = line["quantity"].as_u64().filter(|q| *q >= 1);
        let quantity = quantity
            .ok_or_else(|| format!("items[{index}].quantity must be a positive integer"))?;
        let unit = line["unit_price_cents"].as_u64();
        let unit = unit.ok_or_else(|| {
            format!("items[{index}].unit_price_cents must be a non-negative integer")
        })?;
        item_count += quantity;
        subtotal += quantity * unit;
    }
    let discount_cents = subtotal * discount / 100;
    Ok(json!({
        "order_id": order_id,
        "lines": items.len(),
        "item_count": item_count,
        "subtotal_cents": subtotal,
        "discount_cents": discount_cents,
        "total_cents": subtotal - discount_cents,
        "status": "accepted",
    })
    .to_string())
}

/// Runs [`price_order`] in-process instead of a wasm guest.
pub struct NativeHandler;

impl TaskHandler for NativeHandler {
    fn run<'a>(
        &'a self,
        task: Task,
        _limits: &'a TaskLimits,
        _grants: &'a Grants,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = match price_order(&task.input) {
                Ok(output) => Outcome::from_guest_output(output),
                Err(cause) => Outcome::failed("Order.Invalid", cause),
            };
            let stats = TaskStats {
                elapsed: started.elapsed(),
                ..TaskStats::default()
            };
            (TaskEnd::Report(outcome), stats)
        })
    }

    fn describe(&self) -> String {
        "native Rust handler (bench only)".into()
    }
}
