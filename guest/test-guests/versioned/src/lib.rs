//! Test guest: answers `{"version": V, "input": INPUT}`, where V is the `GUEST_VERSION` it was
//! built with (guest/build.sh builds `versioned-1` and `versioned-2`). Hot-reload tests swap
//! one build for the other and check which one ran each task. `{"sleep_ms": N}` in the input
//! makes the task last N ms (a WASI sleep), so reloads happen while tasks are in flight.

use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};
use std::time::Duration;

/// Which build this is.
const VERSION: &str = env!("GUEST_VERSION");

fn handle(input: Value, _ctx: &Context) -> Result<Value, TaskError> {
    if let Some(ms) = input["sleep_ms"].as_u64() {
        std::thread::sleep(Duration::from_millis(ms));
    }
    Ok(json!({ "version": VERSION, "input": input }))
}

export_handler!(handle);
