//! {{name}}: a sfn-wasm-worker task handler in Rust (see README.md).

use sfn_activity_guest::{config, export_handler, json, Context, TaskError, Value};

fn handle(task: Value, ctx: &Context) -> Result<Value, TaskError> {
    let name = task["name"]
        .as_str()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| TaskError::new("Greeting.InvalidInput", "`name` must be a non-empty string"))?;
    ctx.info(&format!("greeting {name}"));
    // A value of the activity's [activity.config] (or `invoke --config-value greeting=hi`).
    let greeting = config("greeting")?.unwrap_or_else(|| "hello".into());
    Ok(json!({ "greeting": format!("{greeting}, {name}"), "task_id": ctx.task_id }))
}

export_handler!(handle);
