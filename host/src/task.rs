//! One task in its sandbox: a fresh [`Store`] with its own WASI context, memory cap,
//! deadline and output capture, dropped when the task ends.

use crate::bindings::sfn::activity::types::TaskContext;
use crate::bindings::HandlerPre;
use crate::host_api::{Heartbeat, HostState, Interrupt, InterruptReason};
use crate::outcome::{self, Outcome};
use crate::output_capture::TailCapture;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Bytes of each of stdout and stderr kept per task.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;
/// Instances one task may create (a component's core instances count).
const MAX_INSTANCES: usize = 256;
/// Tables one task may create.
const MAX_TABLES: usize = 256;
/// Linear memories one task may create.
const MAX_MEMORIES: usize = 32;

/// The resources a task's guest may use.
#[derive(Debug, Clone)]
pub struct TaskLimits {
    /// Wall-clock time the guest may run (instantiation + `handle`).
    pub timeout: Duration,
    /// Total bytes of linear memory the guest may hold, across all its memories.
    pub memory_limit: u64,
}

/// Capabilities granted to a guest beyond pure computation. Nothing by default.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Host directories the guest may read: (host path, path inside the guest).
    pub read_only_dirs: Vec<(PathBuf, String)>,
}

/// One task to run.
#[derive(Clone)]
pub struct Task {
    /// The task's JSON input text.
    pub input: String,
    /// ARN of the activity the task came from.
    pub activity_arn: Arc<str>,
    /// The worker's name.
    pub worker_name: Arc<str>,
    /// Log-correlation id derived from the task token (see [`crate::task_id`]).
    pub task_id: String,
    /// Where the guest's heartbeats go.
    pub heartbeat: Arc<dyn Heartbeat>,
    /// Lets the worker stop the task early.
    pub interrupt: Interrupt,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEnd {
    /// Report this outcome to Step Functions.
    Report(Outcome),
    /// Report nothing: Step Functions no longer knows the task.
    Abandoned(String),
}

/// Figures about one finished task, for logs and benchmarks.
#[derive(Debug, Clone)]
pub struct TaskStats {
    /// Wall-clock time from store creation to the end.
    pub elapsed: Duration,
    /// Peak linear memory the guest held, in bytes.
    pub peak_memory: u64,
    /// Heartbeats the guest asked for.
    pub heartbeats: u64,
    /// The tail of the guest's stdout.
    pub stdout_tail: String,
    /// The tail of the guest's stderr.
    pub stderr_tail: String,
}

/// The future a [`TaskHandler`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = (TaskEnd, TaskStats)> + Send + 'a>>;

/// What runs an activity's tasks: a wasm [`crate::runtime::Guest`] in production; benchmarks
/// plug in native code to measure the worker's own ceiling.
pub trait TaskHandler: Send + Sync {
    /// Runs one task to its end.
    fn run<'a>(
        &'a self,
        task: Task,
        limits: &'a TaskLimits,
        grants: &'a Grants,
    ) -> HandlerFuture<'a>;

    /// What to call the handler in logs (for a guest, its component's path).
    fn describe(&self) -> String;
}

/// Everything a task's [`Store`] holds.
pub struct TaskState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    host: HostState,
    deadline: Instant,
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Gives the generated `host` bindings their per-task state.
pub(crate) fn host_state(state: &mut TaskState) -> &mut HostState {
    &mut state.host
}

/// Caps a task's total linear memory and remembers a refused grow, so that the trap a
/// guest raises after failing to allocate is reported as `Wasm.OutOfMemory`.
struct MemoryLimiter {
    limit: u64,
    used: u64,
    peak: u64,
    refused: Option<u64>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let wanted = self.used + (desired - current) as u64;
        if wanted > self.limit {
            self.refused = Some(wanted);
            return Ok(false);
        }
        self.used = wanted;
        self.peak = self.peak.max(wanted);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= crate::engine::TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Runs `task` in a fresh store of `pre`'s component and maps what happens to a [`TaskEnd`].
pub(crate) async fn run_task(
    pre: &HandlerPre<TaskState>,
    task: Task,
    limits: &TaskLimits,
    grants: &Grants,
) -> (TaskEnd, TaskStats) {
    let started = Instant::now();
    let stdout = TailCapture::new(OUTPUT_TAIL_BYTES);
    let stderr = TailCapture::new(OUTPUT_TAIL_BYTES);
    let interrupt = task.interrupt.clone();
    let deadline = started + limits.timeout;

    let mut store = match new_store(pre, &task, limits, grants, &stdout, &stderr, deadline) {
        Ok(store) => store,
        Err(err) => {
            let end = TaskEnd::Report(Outcome::failed(
                outcome::INSTANTIATION_FAILED,
                format!("could not set up the sandbox: {err:#}"),
            ));
            return (end, stats(started, None, &stdout, &stderr));
        }
    };
    let context = TaskContext {
        activity_arn: task.activity_arn.to_string(),
        worker_name: task.worker_name.to_string(),
        task_id: task.task_id.clone(),
        deadline_ms: limits.timeout.as_millis() as u64,
    };

    let call = async {
        let handler = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| (e, true))?;
        handler
            .call_handle(&mut store, &task.input, &context)
            .await
            .map_err(|e| (e, false))
    };
    // The epoch callback stops a guest that computes; these stop one blocked in a host call.
    let result = tokio::select! {
        result = call => Ok(result),
        _ = tokio::time::sleep_until(deadline.into()) => Err(None),
        reason = interrupt.triggered() => Err(Some(reason)),
    };

    let end = match result {
        Ok(Ok(Ok(output))) => TaskEnd::Report(Outcome::from_guest_output(output)),
        Ok(Ok(Err(task_error))) => {
            TaskEnd::Report(Outcome::failed(task_error.error, task_error.cause))
        }
        Ok(Err((err, during_instantiation))) => {
            classify_error(&store, err, during_instantiation, limits, &stderr)
        }
        Err(None) => timed_out(limits, &stderr),
        Err(Some(reason)) => interrupted(reason),
    };
    (end, stats(started, Some(&store), &stdout, &stderr))
}

#[allow(clippy::too_many_arguments)]
fn new_store(
    pre: &HandlerPre<TaskState>,
    task: &Task,
    limits: &TaskLimits,
    grants: &Grants,
    stdout: &TailCapture,
    stderr: &TailCapture,
    deadline: Instant,
) -> anyhow::Result<Store<TaskState>> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (key, value) in &grants.env {
        wasi.env(key, value);
    }
    for (host_path, guest_path) in &grants.read_only_dirs {
        wasi.preopened_dir(host_path, guest_path, FsPerms::ReadOnly)
            .map_err(|err| {
                anyhow::anyhow!("granting {} as {guest_path}: {err:#}", host_path.display())
            })?;
    }
    let state = TaskState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limiter: MemoryLimiter {
            limit: limits.memory_limit,
            used: 0,
            peak: 0,
            refused: None,
        },
        host: HostState {
            activity_arn: task.activity_arn.clone(),
            task_id: task.task_id.clone(),
            heartbeat: task.heartbeat.clone(),
            interrupt: task.interrupt.clone(),
            heartbeats_requested: 0,
            log_lines: 0,
        },
        deadline,
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|context| {
        let state = context.data();
        if state.host.interrupt.reason().is_some() || Instant::now() >= state.deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    Ok(store)
}

fn classify_error(
    store: &Store<TaskState>,
    err: wasmtime::Error,
    during_instantiation: bool,
    limits: &TaskLimits,
    stderr: &TailCapture,
) -> TaskEnd {
    let state = store.data();
    if let Some(wanted) = state.limiter.refused {
        return TaskEnd::Report(Outcome::failed(
            outcome::OUT_OF_MEMORY,
            with_stderr(
                format!(
                    "the guest needed {wanted} bytes of linear memory; its limit is {} bytes \
                     (raise the activity's memory_limit if this is expected). {}",
                    limits.memory_limit,
                    error_chain(&err)
                ),
                stderr,
            ),
        ));
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return match state.host.interrupt.reason() {
            Some(reason) => interrupted(reason.clone()),
            None => timed_out(limits, stderr),
        };
    }
    if during_instantiation && err.downcast_ref::<Trap>().is_none() {
        return TaskEnd::Report(Outcome::failed(
            outcome::INSTANTIATION_FAILED,
            format!("could not instantiate the component: {}", error_chain(&err)),
        ));
    }
    TaskEnd::Report(Outcome::failed(
        outcome::TRAP,
        with_stderr(trap_cause(&err), stderr),
    ))
}

/// The trap's message first (e.g. "wasm trap: call stack exhausted"), then the backtrace.
fn trap_cause(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(trap) => format!("{trap}\n{}", error_chain(err)),
        None => error_chain(err),
    }
}

/// The error and its causes, as `{:?}` shows them but without the host's Rust backtrace
/// (which `{:?}` appends when `RUST_BACKTRACE` is set): it says nothing about the guest and
/// would crowd the stderr tail out of a size-limited cause.
fn error_chain(err: &wasmtime::Error) -> String {
    let mut text = err.to_string();
    let causes: Vec<String> = err.chain().skip(1).map(|cause| cause.to_string()).collect();
    if !causes.is_empty() {
        text.push_str("\n\nCaused by:");
        for cause in causes {
            text.push_str("\n    ");
            text.push_str(&cause.replace('\n', "\n    "));
        }
    }
    text
}

fn timed_out(limits: &TaskLimits, stderr: &TailCapture) -> TaskEnd {
    TaskEnd::Report(Outcome::failed(
        outcome::TIMEOUT,
        with_stderr(
            format!(
                "the guest ran past its deadline of {} (the activity's timeout) and was stopped",
                humantime::format_duration(limits.timeout)
            ),
            stderr,
        ),
    ))
}

fn interrupted(reason: InterruptReason) -> TaskEnd {
    match reason {
        InterruptReason::ShuttingDown => TaskEnd::Report(Outcome::failed(
            outcome::SHUTTING_DOWN,
            "the worker shut down before the task finished; retry it",
        )),
        InterruptReason::TaskGone(why) => TaskEnd::Abandoned(why),
    }
}

/// Appends the stderr tail, which usually holds the panic message, to a failure cause.
fn with_stderr(cause: String, stderr: &TailCapture) -> String {
    let tail = stderr.tail_text();
    if tail.is_empty() {
        cause
    } else {
        format!("{cause}\n--- guest stderr (tail) ---\n{tail}")
    }
}

fn stats(
    started: Instant,
    store: Option<&Store<TaskState>>,
    stdout: &TailCapture,
    stderr: &TailCapture,
) -> TaskStats {
    TaskStats {
        elapsed: started.elapsed(),
        peak_memory: store.map_or(0, |s| s.data().limiter.peak),
        heartbeats: store.map_or(0, |s| s.data().host.heartbeats_requested),
        stdout_tail: stdout.tail_text(),
        stderr_tail: stderr.tail_text(),
    }
}
