//! {{name}}: a sfn-wasm-worker task handler in Rust (see README.md).

use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};

fn handle(task: Value, ctx: &Context) -> Result<Value, TaskError> {
    let name = task["name"]
        .as_str()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| TaskError::new("Greeting.InvalidInput", "`name` must be a non-empty string"))?;
    ctx.info(&format!("greeting {name}"));
    Ok(json!({ "greeting": format!("hello, {name}"), "task_id": ctx.task_id }))
}

export_handler!(handle);
