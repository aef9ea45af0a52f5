//! Example guest in Rust: a price quote from the activity's configuration, read through the
//! SDK's `config` (wasi:config): `rate` (e.g. a Parameter Store parameter), `region` (a plain
//! value) and `api_key` (e.g. a Secrets Manager secret, fetched by the worker; the guest never
//! reports it, only its length and checksum).
//!
//! Input: `{"amount": N, "probe": [KEY, ...]}`. Output: `{"region", "rate", "total"` (amount ×
//! rate, rounded to cents), `"api_key": {"length", "checksum"}` or null, `"present": {KEY:
//! bool}}`. A `rate` that is not a number fails the task with `Quote.BadRate`.

use sfn_activity_guest::{config, export_handler, json, Context, TaskError, Value};

/// What the guest says of a secret: its UTF-8 length and byte sum modulo 65521.
fn fingerprint(text: &str) -> Value {
    let checksum = text.bytes().map(u64::from).sum::<u64>() % 65521;
    json!({ "length": text.len(), "checksum": checksum })
}

fn handle(task: Value, ctx: &Context) -> Result<Value, TaskError> {
    let rate = config("rate")?;
    let total = match &rate {
        Some(rate) => {
            let factor: f64 = rate.trim().parse().map_err(|_| {
                TaskError::new("Quote.BadRate", format!("rate {rate:?} is not a number"))
            })?;
            let amount = task["amount"].as_f64().unwrap_or(0.0);
            Some((amount * factor * 100.0).round() / 100.0)
        }
        None => None,
    };
    let api_key = ctx.config("api_key")?;
    let mut present = serde_json::Map::new();
    for key in task["probe"].as_array().into_iter().flatten() {
        if let Some(key) = key.as_str() {
            present.insert(key.to_string(), json!(config(key)?.is_some()));
        }
    }
    Ok(json!({
        "region": config("region")?,
        "rate": rate,
        "total": total,
        "api_key": api_key.as_deref().map(fingerprint),
        "present": present,
    }))
}

export_handler!(handle);
