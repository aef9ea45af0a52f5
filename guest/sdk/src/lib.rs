//! The Rust guest SDK for sfn-wasm-worker.
//!
//! A task handler is a plain function from the task's JSON input to its JSON output:
//!
//! ```ignore
//! use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};
//!
//! fn handle(input: Value, ctx: &Context) -> Result<Value, TaskError> {
//!     let name: String = serde_json::from_value(input["name"].clone())?;
//!     ctx.info(&format!("greeting {name}"));
//!     Ok(json!({ "greeting": format!("hello, {name}") }))
//! }
//!
//! export_handler!(handle);
//! ```
//!
//! Build it for `wasm32-wasip2` (or `wasm32-unknown-unknown` when it uses no WASI) as
//! `guest/build.sh` does; the result is a component implementing `sfn:activity/handler`.

pub use serde_json::{self, json, Value};

/// Bindings generated from the WIT contract in `wit/`; used by [`export_handler!`].
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "handler",
        // wasi:config/store (the `config` function) is generated here too.
        generate_all,
        export_macro_name: "export_handler_world",
        pub_export_macro: true,
        default_bindings_module: "sfn_activity_guest::bindings",
    });
}

use bindings::sfn::activity::host;

/// Severity of a log line sent with [`Context::log`].
pub use bindings::sfn::activity::host::LogLevel;

/// What the handler may know about its task (never the task token).
#[derive(Debug, Clone)]
pub struct Context {
    /// ARN of the activity the task came from.
    pub activity_arn: String,
    /// The worker's name, as sent on GetActivityTask.
    pub worker_name: String,
    /// A stable id for log correlation, derived from (but not revealing) the task token.
    pub task_id: String,
    /// Milliseconds left before the host stops this task with `Wasm.Timeout`.
    pub deadline_ms: u64,
}

impl Context {
    /// Writes a line at `level` into the host's structured log.
    pub fn log(&self, level: LogLevel, message: &str) {
        host::log(level, message);
    }

    /// Writes an info line into the host's structured log.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Writes a warning into the host's structured log.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Asks the host to heartbeat this task now; `Err` means the task timed out or was
    /// cancelled and the handler should stop.
    pub fn heartbeat(&self) -> Result<(), String> {
        host::heartbeat()
    }

    /// The activity's configuration value `key`: [`config`].
    pub fn config(&self, key: &str) -> Result<Option<String>, TaskError> {
        config(key)
    }
}

/// The activity's configuration value `key` (an `[activity.config]` value, or a secret the
/// worker fetched from Secrets Manager or Parameter Store; wasi:config underneath): `None`
/// if the activity gives no such key, `Err` (`Config.Unavailable`) if the worker cannot give
/// it, so a handler can `?` it.
///
/// ```ignore
/// let api_key = config("api_key")?
///     .ok_or_else(|| TaskError::new("Config.Missing", "the activity gives no api_key"))?;
/// ```
pub fn config(key: &str) -> Result<Option<String>, TaskError> {
    bindings::wasi::config::store::get(key).map_err(|err| {
        let detail = match err {
            bindings::wasi::config::store::Error::Upstream(why)
            | bindings::wasi::config::store::Error::Io(why) => why,
        };
        TaskError::new("Config.Unavailable", format!("{key}: {detail}"))
    })
}

/// A task failure: becomes SendTaskFailure's `error` (matched by Retry/Catch) and `cause`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// Stable error name, e.g. `Order.Invalid`.
    pub error: String,
    /// Human-readable explanation.
    pub cause: String,
}

impl TaskError {
    /// A failure with the given error name and cause.
    pub fn new(error: impl Into<String>, cause: impl Into<String>) -> Self {
        TaskError {
            error: error.into(),
            cause: cause.into(),
        }
    }
}

/// `?` on a serde_json error (typically `from_value` on the input) fails the task with
/// `Task.InvalidInput` and serde's message as the cause.
impl From<serde_json::Error> for TaskError {
    fn from(err: serde_json::Error) -> Self {
        TaskError::new("Task.InvalidInput", err.to_string())
    }
}

/// Runs `handler` on one raw task: parses the input, calls it, serialises the output.
///
/// Called by the code [`export_handler!`] generates; not meant to be called directly.
#[doc(hidden)]
pub fn run_handler(
    handler: fn(Value, &Context) -> Result<Value, TaskError>,
    input: String,
    context: bindings::TaskContext,
) -> Result<String, bindings::TaskError> {
    let context = Context {
        activity_arn: context.activity_arn,
        worker_name: context.worker_name,
        task_id: context.task_id,
        deadline_ms: context.deadline_ms,
    };
    let result = serde_json::from_str::<Value>(&input)
        .map_err(|err| TaskError::new("Task.InvalidInput", format!("input is not JSON: {err}")))
        .and_then(|input| handler(input, &context))
        .and_then(|output| {
            serde_json::to_string(&output).map_err(|err| {
                TaskError::new("Worker.InvalidOutput", format!("cannot serialise output: {err}"))
            })
        });
    result.map_err(|err| bindings::TaskError {
        error: err.error,
        cause: err.cause,
    })
}

/// Exports `handler: fn(Value, &Context) -> Result<Value, TaskError>` as the component's
/// `handle` function.
#[macro_export]
macro_rules! export_handler {
    ($handler:path) => {
        struct __SfnActivityHandler;

        impl $crate::bindings::Guest for __SfnActivityHandler {
            fn handle(
                input: ::std::string::String,
                context: $crate::bindings::TaskContext,
            ) -> ::std::result::Result<::std::string::String, $crate::bindings::TaskError> {
                $crate::run_handler($handler, input, context)
            }
        }

        $crate::bindings::export_handler_world!(__SfnActivityHandler with_types_in $crate::bindings);
    };
}
