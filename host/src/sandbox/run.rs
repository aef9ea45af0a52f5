//! Running one task: an [`Instance`] of a pre-instantiated component (fresh, or ready or
//! warm from [`crate::sandbox::instances`]) given the task's own capabilities and deadline,
//! `handle` called with its input, raced against the deadline and the worker's interrupt;
//! how it stopped goes to the outcome rules ([`crate::sandbox::outcome`]).

use crate::sandbox::bindings::sfn::activity::types::TaskContext;
use crate::sandbox::bindings::{Handler, HandlerPre};
use crate::sandbox::capability::{Grants, TaskSetup, TaskUsage};
use crate::sandbox::host_api::{CountingHeartbeat, Heartbeat, Interrupt};
use crate::sandbox::instances::InstanceSource;
use crate::sandbox::large_output;
use crate::sandbox::limits::{TaskLimits, OUTPUT_TAIL_BYTES};
use crate::sandbox::outcome::{
    Outcome, RunFacts, RunStop, TaskEnd, MAX_OUTPUT_BYTES, OUT_OF_MEMORY,
};
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

impl Task {
    /// A task with no input that nobody waits for: what a ready instance's start-up and a
    /// load check run as (a heartbeat goes nowhere).
    pub(crate) fn placeholder(activity_arn: Arc<str>, task_id: &str) -> Task {
        Task {
            input: String::new(),
            activity_arn,
            worker_name: "".into(),
            task_id: task_id.into(),
            heartbeat: Arc::new(CountingHeartbeat::default()),
            interrupt: Interrupt::default(),
        }
    }
}

/// Where one task's sandbox time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    /// Creating the store (WASI context, host state, limiter).
    pub store: Duration,
    /// Instantiating the component in it (none for a ready or warm instance).
    pub instantiate: Duration,
    /// `handle`: lowering the input, the guest's work, lifting the result.
    pub handle: Duration,
    /// Dropping the store (returning instances and memories to the pool); none for an
    /// instance kept warm.
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
    /// Where its instance came from.
    pub instance: InstanceSource,
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

    /// Drops what it keeps for later tasks (ready and warm instances): its activity's spec
    /// was replaced or removed. Tasks still running finish.
    fn retire(&self) {}
}

/// One instance of a component in its own store, with the captures of its guest's stdout
/// and stderr: made for one task, made ahead of one (ready), or kept warm between the tasks
/// of one activity (see [`crate::sandbox::instances`]).
pub(crate) struct Instance {
    store: Store<TaskState>,
    /// The instantiated component; `None` until instantiated.
    handler: Option<Handler>,
    stdout: TailCapture,
    stderr: TailCapture,
    /// Tasks it has begun.
    tasks: u32,
    /// When it last ended a task, or was made.
    idle_since: Instant,
}

impl Instance {
    /// A store of `pre`'s component set up for `task` under `limits` and `grants`, until
    /// `deadline`; not instantiated yet.
    pub(crate) fn new(
        pre: &HandlerPre<TaskState>,
        task: &Task,
        limits: &TaskLimits,
        grants: &Grants,
        deadline: Instant,
    ) -> anyhow::Result<Instance> {
        let stdout = TailCapture::new(OUTPUT_TAIL_BYTES);
        let stderr = TailCapture::new(OUTPUT_TAIL_BYTES);
        let capabilities = grants.task_states(&TaskSetup {
            grants,
            task,
            stdout: &stdout,
            stderr: &stderr,
            deadline,
        })?;
        Ok(Instance {
            store: new_store(pre.engine(), limits, capabilities, deadline),
            handler: None,
            stdout,
            stderr,
            tasks: 0,
            idle_since: Instant::now(),
        })
    }

    /// Instantiates it (its start-up code runs) within its store's CPU share (none for an
    /// instance made ahead of its task), stopped at its deadline; `Err` says how it stopped.
    pub(crate) async fn instantiate(&mut self, pre: &HandlerPre<TaskState>) -> Result<(), RunStop> {
        let deadline = self.store.data().deadline();
        let cpu = self.store.data().cpu();
        let store = &mut self.store;
        let instantiated = tokio::select! {
            instantiated = cpu.run(pre.instantiate_async(&mut *store)) => instantiated,
            _ = tokio::time::sleep_until(deadline.into()) => return Err(RunStop::DeadlinePassed),
        };
        match instantiated {
            Ok(handler) => {
                self.handler = Some(handler);
                Ok(())
            }
            Err(err) => Err(RunStop::InstantiationError(err)),
        }
    }

    /// Hands it to `task`: every capability's state made afresh for the task (its identity,
    /// heartbeat, interrupt, counters), its deadline, and, after an earlier task, empty
    /// captures (a ready instance's start-up output belongs to its first task).
    fn begin(&mut self, task: &Task, grants: &Grants, deadline: Instant) -> anyhow::Result<()> {
        if self.tasks > 0 {
            self.stdout.clear();
            self.stderr.clear();
        }
        self.give_to(task, grants, deadline)?;
        self.store.set_epoch_deadline(1);
        Ok(())
    }

    /// Parks it between tasks: the finished task's capabilities (its heartbeat, interrupt
    /// and place in the CPU share) are dropped for `parking`'s placeholder's, so an idle
    /// instance neither counts as a running guest of its activity nor holds the last
    /// task's handles.
    fn park(&mut self, parking: &Parking) -> anyhow::Result<()> {
        self.give_to(
            &parking.task,
            &parking.grants,
            Instant::now() + Duration::from_secs(365 * 24 * 3600),
        )?;
        self.idle_since = Instant::now();
        Ok(())
    }

    /// Swaps in every capability's state for `task` under `grants`, and its `deadline`.
    fn give_to(&mut self, task: &Task, grants: &Grants, deadline: Instant) -> anyhow::Result<()> {
        let capabilities = grants.task_states(&TaskSetup {
            grants,
            task,
            stdout: &self.stdout,
            stderr: &self.stderr,
            deadline,
        })?;
        self.store.data_mut().begin_task(capabilities, deadline);
        Ok(())
    }

    /// When it last ended a task, or was made.
    pub(crate) fn idle_since(&self) -> Instant {
        self.idle_since
    }
}

/// How an activity's instances wait for a task (ready ones, and warm ones between tasks),
/// made once per activity spec: a placeholder task's capabilities under the activity's
/// grants with no CPU share (an instance waiting for a task is not one of the activity's
/// running guests), and how many tasks a warm one may serve.
pub(crate) struct Parking {
    /// Tasks one instance may begin (1: none is kept after its task).
    pub(crate) max_tasks: u32,
    /// The placeholder task an idle instance's capabilities are made for.
    pub(crate) task: Task,
    /// The activity's grants without its CPU share.
    pub(crate) grants: Grants,
}

impl Parking {
    /// The parking of the activity `activity_arn`'s instances under `grants`, each serving
    /// up to `max_tasks` tasks.
    pub(crate) fn new(activity_arn: Arc<str>, grants: &Grants, max_tasks: u32) -> Parking {
        Parking {
            max_tasks,
            task: Task::placeholder(activity_arn, "idle-instance"),
            grants: Grants {
                cpu: Default::default(),
                ..grants.clone()
            },
        }
    }
}

/// Runs `task` in `instance` (a ready or warm one), or in a fresh instance of `pre`'s
/// component made for it, and maps how it stopped to a [`TaskEnd`]. With `parking`, the
/// instance comes back, parked, when it may serve a later task: the guest returned (`ok` or
/// `err`) with no memory grow refused and no interrupt, and it has begun fewer than
/// `parking.max_tasks` tasks. Otherwise it is dropped here (the `drop` phase).
pub(crate) async fn run_task(
    pre: &HandlerPre<TaskState>,
    task: Task,
    limits: &TaskLimits,
    grants: &Grants,
    instance: Option<Instance>,
    parking: Option<&Parking>,
) -> (TaskEnd, TaskStats, Option<Instance>) {
    let started = Instant::now();
    let deadline = started + limits.timeout;
    let mut phases = Phases::default();
    let mut call = CallMarks::default();
    let instance = match instance {
        Some(mut instance) => instance.begin(&task, grants, deadline).map(|()| instance),
        None => Instance::new(pre, &task, limits, grants, deadline),
    };
    let (stop, mut instance) = match instance {
        Ok(mut instance) => {
            phases.store = started.elapsed();
            instance.tasks += 1;
            let stop = call_guest(pre, &mut instance, &task, &mut call).await;
            (stop, Some(instance))
        }
        Err(err) => (RunStop::SetupFailed(err), None),
    };
    let handled_at = Instant::now();
    let set_up = started + phases.store;
    (phases.instantiate, phases.handle) = match call {
        // Instantiated (after any wait for a CPU turn), then handled.
        CallMarks {
            instantiated: true,
            handle_started: Some(at),
        } => (at - set_up, handled_at - at),
        // Handled in an instance made earlier.
        CallMarks {
            instantiated: false,
            handle_started: Some(at),
        } => (Duration::ZERO, handled_at - at),
        // Stopped before `handle`: in the instantiation, or waiting for a CPU turn.
        CallMarks {
            handle_started: None,
            ..
        } => (handled_at.saturating_duration_since(set_up), Duration::ZERO),
    };
    let state = instance.as_ref().map(|instance| instance.store.data());
    let refused_memory = state.and_then(|s| s.limiter().refused());
    let facts = RunFacts {
        limits,
        refused_memory,
        interrupt: task.interrupt.reason(),
        stderr_tail: instance
            .as_ref()
            .map(|i| i.stderr.tail_text())
            .unwrap_or_default(),
    };
    let mut stats = TaskStats {
        peak_memory: state.map_or(0, |s| s.limiter().peak()),
        stdout_tail: instance
            .as_ref()
            .map(|i| i.stdout.tail_text())
            .unwrap_or_default(),
        stderr_tail: facts.stderr_tail.clone(),
        // Handles, read after the drop: a response the guest still held is recorded as it goes.
        usage: state.map(TaskState::usage).unwrap_or_default(),
        ..TaskStats::default()
    };
    let reusable = match &stop {
        RunStop::Returned(Ok(_)) => true,
        RunStop::Returned(Err(error)) => error.error != OUT_OF_MEMORY,
        _ => false,
    } && refused_memory.is_none()
        && facts.interrupt.is_none();
    let parked = reusable
        && parking.is_some_and(|parking| {
            instance
                .as_mut()
                .is_some_and(|i| i.tasks < parking.max_tasks && i.park(parking).is_ok())
        });
    if !parked {
        let dropping = Instant::now();
        drop(instance.take());
        phases.drop = dropping.elapsed();
    }
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
    (end, stats, instance)
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
    let task = Task::placeholder(activity_arn, "load-check");
    let deadline = Instant::now() + limits.timeout;
    let (stop, instance) = match Instance::new(pre, &task, limits, grants, deadline) {
        Ok(mut instance) => match instance.instantiate(pre).await {
            Ok(()) => return Ok(()),
            Err(stop) => (stop, Some(instance)),
        },
        Err(err) => (RunStop::SetupFailed(err), None),
    };
    let facts = RunFacts {
        limits,
        refused_memory: instance
            .as_ref()
            .and_then(|i| i.store.data().limiter().refused()),
        interrupt: None,
        stderr_tail: instance
            .as_ref()
            .map(|i| i.stderr.tail_text())
            .unwrap_or_default(),
    };
    match TaskEnd::from_stop(stop, &facts) {
        TaskEnd::Report(outcome) => Err(outcome),
        TaskEnd::Abandoned(why) => unreachable!("nothing interrupts a load check: {why}"),
    }
}

/// What happened in [`call_guest`] before it stopped, for the phases' times.
#[derive(Default)]
struct CallMarks {
    /// Whether it instantiated the component.
    instantiated: bool,
    /// When `handle` was called, if it was.
    handle_started: Option<Instant>,
}

/// Instantiates the component if `instance` is not yet, and calls `handle`, within the
/// task's CPU share. The epoch callback stops a guest that computes; the race here stops
/// one blocked in a host call (or waiting for a CPU turn).
async fn call_guest(
    pre: &HandlerPre<TaskState>,
    instance: &mut Instance,
    task: &Task,
    marks: &mut CallMarks,
) -> RunStop {
    let deadline = instance.store.data().deadline();
    let cpu = instance.store.data().cpu();
    let call = async {
        if instance.handler.is_none() {
            marks.instantiated = true;
            match pre.instantiate_async(&mut instance.store).await {
                Ok(handler) => instance.handler = Some(handler),
                Err(err) => return RunStop::InstantiationError(err),
            }
        }
        let now = Instant::now();
        marks.handle_started = Some(now);
        // What is left of the timeout now, after the store, any wait for a CPU turn and the
        // instantiation: the time the guest really has.
        let context = TaskContext {
            activity_arn: task.activity_arn.to_string(),
            worker_name: task.worker_name.to_string(),
            task_id: task.task_id.clone(),
            deadline_ms: u64::try_from(deadline.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX),
        };
        let handler = instance.handler.as_ref().expect("instantiated just above");
        match handler
            .call_handle(&mut instance.store, &task.input, &context)
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
