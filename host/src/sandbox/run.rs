//! Running one task: a fresh store of a pre-instantiated component, `handle` called with the
//! task's input, raced against the deadline and the worker's interrupt; how it stopped goes
//! to the outcome rules ([`crate::sandbox::outcome`]).

use crate::sandbox::bindings::sfn::activity::types::TaskContext;
use crate::sandbox::bindings::HandlerPre;
use crate::sandbox::capability::{Grants, TaskSetup, TaskUsage};
use crate::sandbox::host_api::{CountingHeartbeat, Heartbeat, Interrupt};
use crate::sandbox::large_output;
use crate::sandbox::limits::{TaskLimits, OUTPUT_TAIL_BYTES};
use crate::sandbox::outcome::{Outcome, RunFacts, RunStop, TaskEnd, MAX_OUTPUT_BYTES};
use crate::sandbox::output_capture::TailCapture;
use crate::sandbox::store::{new_store, TaskState};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Store;

/// One task to run.
#[derive(Clone)]
pub struct Task {
    /// The task's JSON input text.
    pub input: String,
    /// ARN of the activity the task came from.
    pub activity_arn: Arc<str>,
    /// The worker's name.
    pub worker_name: Arc<str>,
    /// Log-correlation id derived from the task token
    /// (see [`crate::worker::sfn::ActivityTask::task_id`]).
    pub task_id: String,
    /// Where the guest's heartbeats go.
    pub heartbeat: Arc<dyn Heartbeat>,
    /// Lets the worker stop the task early.
    pub interrupt: Interrupt,
}

/// Where one task's sandbox time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Creating the store (WASI context, host state, limiter).
    pub store: Duration,
    /// Instantiating the component in it.
    pub instantiate: Duration,
    /// `handle`: lowering the input, the guest's work, lifting the result.
    pub handle: Duration,
    /// Dropping the store (returning instances and memories to the pool).
    pub drop: Duration,
}

/// Figures about one finished task, for logs and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct TaskStats {
    /// Wall-clock time from store creation to the store dropped.
    pub elapsed: Duration,
    /// The same time by phase.
    pub phases: Phases,
    /// Peak linear memory the guest held, in bytes.
    pub peak_memory: u64,
    /// What it used of each capability.
    pub usage: TaskUsage,
    /// The tail of the guest's stdout.
    pub stdout_tail: String,
    /// The tail of the guest's stderr.
    pub stderr_tail: String,
}

/// The future a [`TaskHandler`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = (TaskEnd, TaskStats)> + Send + 'a>>;

/// What runs an activity's tasks: a wasm [`crate::sandbox::Guest`] in production;
/// benchmarks plug in native code to measure the worker's own ceiling.
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

/// Runs `task` in a fresh store of `pre`'s component and maps how it stopped to a [`TaskEnd`].
pub(crate) async fn run_task(
    pre: &HandlerPre<TaskState>,
    task: Task,
    limits: &TaskLimits,
    grants: &Grants,
) -> (TaskEnd, TaskStats) {
    let started = Instant::now();
    let stdout = TailCapture::new(OUTPUT_TAIL_BYTES);
    let stderr = TailCapture::new(OUTPUT_TAIL_BYTES);
    let deadline = started + limits.timeout;
    let mut phases = Phases::default();
    let mut instantiated_at = None;
    let (stop, store) = match task_store(pre, &task, limits, grants, (&stdout, &stderr), deadline) {
        Ok(mut store) => {
            phases.store = started.elapsed();
            let stop = call_guest(pre, &mut store, &task, &mut instantiated_at).await;
            (stop, Some(store))
        }
        Err(err) => (RunStop::SetupFailed(err), None),
    };
    let handled_at = Instant::now();
    if let Some(instantiated_at) = instantiated_at {
        phases.instantiate = instantiated_at - (started + phases.store);
        phases.handle = handled_at - instantiated_at;
    } else {
        phases.instantiate = handled_at.saturating_duration_since(started + phases.store);
    }
    let state = store.as_ref().map(Store::data);
    let facts = RunFacts {
        limits,
        refused_memory: state.and_then(|s| s.limiter().refused()),
        interrupt: task.interrupt.reason(),
        stderr_tail: stderr.tail_text(),
    };
    let mut stats = TaskStats {
        peak_memory: state.map_or(0, |s| s.limiter().peak()),
        stdout_tail: stdout.tail_text(),
        stderr_tail: facts.stderr_tail.clone(),
        // Handles, read after the drop: a response the guest still held is recorded as it goes.
        usage: state.map(TaskState::usage).unwrap_or_default(),
        ..TaskStats::default()
    };
    let dropping = Instant::now();
    drop(store);
    phases.drop = dropping.elapsed();
    stats.elapsed = started.elapsed();
    stats.phases = phases;
    let end = match stop {
        RunStop::Returned(Ok(output))
            if output.len() > MAX_OUTPUT_BYTES && grants.large_output.is_some() =>
        {
            TaskEnd::Report(large_output::claim_check(output, &task, grants).await)
        }
        stop => TaskEnd::from_stop(stop, &facts),
    };
    (end, stats)
}

/// Instantiates `pre`'s component once in a fresh store under `limits` and `grants`, and
/// drops it without calling `handle`: how a load finds a component whose start-up code (a
/// start function) fails, as it would for every task. `Err` holds how a task would end.
pub(crate) async fn instantiate_once(
    pre: &HandlerPre<TaskState>,
    activity_arn: Arc<str>,
    limits: &TaskLimits,
    grants: &Grants,
) -> Result<(), Outcome> {
    let task = Task {
        input: String::new(),
        activity_arn,
        worker_name: "".into(),
        task_id: "load-check".into(),
        heartbeat: Arc::new(CountingHeartbeat::default()),
        interrupt: Interrupt::default(),
    };
    let stdout = TailCapture::new(OUTPUT_TAIL_BYTES);
    let stderr = TailCapture::new(OUTPUT_TAIL_BYTES);
    let deadline = Instant::now() + limits.timeout;
    let (stop, store) = match task_store(pre, &task, limits, grants, (&stdout, &stderr), deadline) {
        Ok(mut store) => {
            let stop = tokio::select! {
                instantiated = pre.instantiate_async(&mut store) => match instantiated {
                    Ok(_) => return Ok(()),
                    Err(err) => RunStop::InstantiationError(err),
                },
                _ = tokio::time::sleep_until(deadline.into()) => RunStop::DeadlinePassed,
            };
            (stop, Some(store))
        }
        Err(err) => (RunStop::SetupFailed(err), None),
    };
    let facts = RunFacts {
        limits,
        refused_memory: store.as_ref().and_then(|s| s.data().limiter().refused()),
        interrupt: None,
        stderr_tail: stderr.tail_text(),
    };
    match TaskEnd::from_stop(stop, &facts) {
        TaskEnd::Report(outcome) => Err(outcome),
        TaskEnd::Abandoned(why) => unreachable!("nothing interrupts a load check: {why}"),
    }
}

/// A fresh store for `task`, the guest's stdout and stderr going to the two captures.
fn task_store(
    pre: &HandlerPre<TaskState>,
    task: &Task,
    limits: &TaskLimits,
    grants: &Grants,
    (stdout, stderr): (&TailCapture, &TailCapture),
    deadline: Instant,
) -> anyhow::Result<Store<TaskState>> {
    let setup = TaskSetup {
        grants,
        task,
        stdout,
        stderr,
        deadline,
    };
    let capabilities = grants.task_states(&setup)?;
    Ok(new_store(pre.engine(), limits, capabilities, deadline))
}

/// Instantiates the component and calls `handle`, within the activity's CPU share. The
/// epoch callback stops a guest that computes; the race here stops one blocked in a host
/// call (or waiting for a CPU turn).
async fn call_guest(
    pre: &HandlerPre<TaskState>,
    store: &mut Store<TaskState>,
    task: &Task,
    instantiated_at: &mut Option<Instant>,
) -> RunStop {
    let deadline = store.data().deadline();
    let cpu = store.data().cpu();
    let call = async {
        let handler = match pre.instantiate_async(&mut *store).await {
            Ok(handler) => handler,
            Err(err) => return RunStop::InstantiationError(err),
        };
        let now = Instant::now();
        *instantiated_at = Some(now);
        // What is left of the timeout now, after the store, any wait for a CPU turn and the
        // instantiation: the time the guest really has.
        let context = TaskContext {
            activity_arn: task.activity_arn.to_string(),
            worker_name: task.worker_name.to_string(),
            task_id: task.task_id.clone(),
            deadline_ms: u64::try_from(deadline.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX),
        };
        match handler
            .call_handle(&mut *store, &task.input, &context)
            .await
        {
            Ok(returned) => RunStop::Returned(returned),
            Err(err) => RunStop::CallError(err),
        }
    };
    tokio::select! {
        stop = cpu.run(call) => stop,
        _ = tokio::time::sleep_until(deadline.into()) => RunStop::DeadlinePassed,
        reason = task.interrupt.triggered() => RunStop::Interrupted(reason),
    }
}
