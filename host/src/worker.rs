//! The activity worker: per activity, `pollers` long polls, each holding a free task slot
//! before it polls; each task runs in its own sandbox, is heartbeated, and is reported
//! exactly once; shutdown stops new polls, runs what open polls bring and drains.

use crate::backoff::Backoff;
use crate::config::{ActivityConfig, Config};
use crate::host_api::{BeatFuture, Heartbeat, Interrupt, InterruptReason};
use crate::outcome::Outcome;
use crate::runtime::{self, Runtime};
use crate::sfn::{ActivityTask, ApiError, SfnClient};
use crate::shutdown::Shutdown;
use crate::task::{Grants, Task, TaskEnd, TaskHandler, TaskLimits};
use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

/// Backoff after a failed poll: first retry within 0.1–0.2 s, at most 30 s apart.
const POLL_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));
/// Backoff between report attempts.
const REPORT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long the worker keeps retrying a report before giving up (and logging it).
pub const REPORT_DEADLINE: Duration = Duration::from_secs(120);
/// The least time between two heartbeats the guest asks for; calls in between return at once.
pub const GUEST_HEARTBEAT_MIN_GAP: Duration = Duration::from_secs(1);

/// Counters of what the worker did; read them at any time.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// GetActivityTask calls that returned (with or without a task).
    pub polls: AtomicU64,
    /// GetActivityTask calls that failed.
    pub poll_errors: AtomicU64,
    /// Tasks received.
    pub tasks_started: AtomicU64,
    /// Tasks reported with SendTaskSuccess.
    pub succeeded: AtomicU64,
    /// Tasks reported with SendTaskFailure.
    pub failed: AtomicU64,
    /// Tasks stopped and not reported because Step Functions no longer knew them.
    pub abandoned: AtomicU64,
    /// Reports refused because the task had timed out or no longer existed.
    pub lost_to_timeout: AtomicU64,
    /// Reports that could not be delivered at all (logged with their outcome).
    pub report_errors: AtomicU64,
    /// SendTaskHeartbeat calls that succeeded.
    pub heartbeats_sent: AtomicU64,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub polls: u64,
    pub poll_errors: u64,
    pub tasks_started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub lost_to_timeout: u64,
    pub report_errors: u64,
    pub heartbeats_sent: u64,
}

impl WorkerStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            polls: get(&self.polls),
            poll_errors: get(&self.poll_errors),
            tasks_started: get(&self.tasks_started),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            abandoned: get(&self.abandoned),
            lost_to_timeout: get(&self.lost_to_timeout),
            report_errors: get(&self.report_errors),
            heartbeats_sent: get(&self.heartbeats_sent),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// One served activity: its component, limits and state.
struct Activity {
    arn: Arc<str>,
    handler: Arc<dyn TaskHandler>,
    limits: TaskLimits,
    grants: Grants,
    config: ActivityConfig,
    /// Set when Step Functions says the activity does not exist: its pollers stop.
    stopped: AtomicBool,
}

/// What every poller and task shares.
struct Shared {
    client: SfnClient,
    worker_name: Arc<str>,
    shutdown: Shutdown,
    stats: Arc<WorkerStats>,
    /// Interrupts of the tasks now running, to stop them when the drain timeout ends.
    in_flight: Mutex<HashMap<u64, Interrupt>>,
    next_task_key: AtomicU64,
    /// Set when the drain timeout has ended: tasks still arriving are stopped at once.
    drain_expired: AtomicBool,
    /// Activities still polling; the worker exits with an error when none is left.
    live_activities: AtomicUsize,
    activity_stopped: Notify,
}

/// The worker: activities with loaded components, a Step Functions client, counters.
pub struct Worker {
    activities: Vec<Arc<Activity>>,
    client: SfnClient,
    worker_name: Arc<str>,
    drain_timeout: Duration,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Loads and checks every activity's component with `runtime`; fails before any poll
    /// if one does not load, naming the activity.
    pub fn new(runtime: &Runtime, config: &Config, client: SfnClient) -> Result<Worker> {
        config.validate()?;
        let mut handlers: Vec<Arc<dyn TaskHandler>> = Vec::new();
        for activity in &config.activities {
            let guest = runtime
                .load(&activity.component)
                .with_context(|| format!("activity {}: key `component`", activity.arn))?;
            handlers.push(Arc::new(guest));
        }
        Worker::with_handlers(config, handlers, client)
    }

    /// A worker whose activities (in `config` order) run their tasks with `handlers`
    /// instead of their components: how benchmarks measure the worker's own ceiling.
    pub fn with_handlers(
        config: &Config,
        handlers: Vec<Arc<dyn TaskHandler>>,
        client: SfnClient,
    ) -> Result<Worker> {
        if handlers.len() != config.activities.len() {
            bail!(
                "{} handlers for {} activities",
                handlers.len(),
                config.activities.len()
            );
        }
        let activities = config
            .activities
            .iter()
            .zip(handlers)
            .map(|(activity, handler)| {
                Arc::new(Activity {
                    arn: activity.arn.as_str().into(),
                    handler,
                    limits: activity.limits(),
                    grants: activity.grants(),
                    config: activity.clone(),
                    stopped: AtomicBool::new(false),
                })
            })
            .collect();
        Ok(Worker {
            activities,
            client,
            worker_name: config.worker_name().into(),
            drain_timeout: config.drain_timeout(),
            stats: Arc::default(),
        })
    }

    /// The worker's counters (shared; they keep counting while it runs).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Serves every activity until `shutdown`, then drains. Errors when every activity has
    /// stopped because Step Functions does not know it.
    pub async fn run(self, shutdown: Shutdown) -> Result<StatsSnapshot> {
        let shared = Arc::new(Shared {
            client: self.client,
            worker_name: self.worker_name,
            shutdown: shutdown.clone(),
            stats: self.stats,
            in_flight: Mutex::default(),
            next_task_key: AtomicU64::new(0),
            drain_expired: AtomicBool::new(false),
            live_activities: AtomicUsize::new(self.activities.len()),
            activity_stopped: Notify::new(),
        });
        let mut pollers = JoinSet::new();
        let tasks = TaskTracker::new();
        for activity in &self.activities {
            let slots = Arc::new(Semaphore::new(activity.config.max_concurrency as usize));
            tracing::info!(
                activity = %activity.arn,
                handler = %activity.handler.describe(),
                max_concurrency = activity.config.max_concurrency,
                pollers = activity.config.pollers,
                worker = %shared.worker_name,
                "serving activity"
            );
            for _ in 0..activity.config.pollers {
                pollers.spawn(poll_loop(
                    shared.clone(),
                    activity.clone(),
                    slots.clone(),
                    tasks.clone(),
                ));
            }
        }

        let all_stopped = async {
            while shared.live_activities.load(Ordering::SeqCst) > 0 {
                let notified = shared.activity_stopped.notified();
                if shared.live_activities.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let stopped_by_errors = tokio::select! {
            _ = shutdown.triggered() => false,
            _ = all_stopped => true,
        };

        // Polls in flight are never aborted: a task they bring must run, not be lost until
        // its timeout. Each poller stops after its current poll returns.
        let drain_deadline = tokio::time::Instant::now() + self.drain_timeout;
        let drain = async {
            while pollers.join_next().await.is_some() {}
            tasks.close();
            tasks.wait().await;
        };
        tokio::pin!(drain);
        let in_time = tokio::select! {
            _ = &mut drain => true,
            _ = tokio::time::sleep_until(drain_deadline) => false,
        };
        if !in_time {
            let running: Vec<Interrupt> =
                shared.in_flight.lock().unwrap().values().cloned().collect();
            tracing::warn!(
                tasks = running.len(),
                drain_timeout = %humantime::format_duration(self.drain_timeout),
                "drain timeout reached: failing running tasks with Worker.ShuttingDown so they are retried"
            );
            shared.drain_expired.store(true, Ordering::SeqCst);
            for interrupt in running {
                interrupt.trigger(InterruptReason::ShuttingDown);
            }
            drain.await;
        }
        let stats = shared.stats.snapshot();
        tracing::info!(?stats, "worker stopped");
        if stopped_by_errors {
            bail!("no activity left to serve: Step Functions does not know any of them (see the errors above)");
        }
        Ok(stats)
    }
}

/// One poller: take a slot, long-poll, hand a task to a new tokio task, repeat.
async fn poll_loop(
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
) {
    let mut backoff = Backoff::new(POLL_BACKOFF.0, POLL_BACKOFF.1);
    loop {
        if shared.shutdown.is_triggered() || activity.stopped.load(Ordering::SeqCst) {
            return;
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the slot semaphore is never closed"),
            _ = shared.shutdown.triggered() => return,
        };
        match shared.client.poll(&activity.arn, &shared.worker_name).await {
            Ok(task) => {
                bump(&shared.stats.polls);
                if backoff.attempts() > 0 {
                    tracing::info!(activity = %activity.arn, failed_polls = backoff.attempts(), "polling recovered");
                    backoff.reset();
                }
                if let Some(task) = task {
                    let (shared, activity) = (shared.clone(), activity.clone());
                    tasks.spawn(async move {
                        run_task(&shared, &activity, task).await;
                        drop(permit);
                    });
                }
            }
            Err(ApiError::ActivityGone(message)) => {
                bump(&shared.stats.poll_errors);
                if !activity.stopped.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        activity = %activity.arn,
                        error = %message,
                        "Step Functions does not know this activity; no longer polling it \
                         (create it, or fix its arn in the config)"
                    );
                    shared.live_activities.fetch_sub(1, Ordering::SeqCst);
                    shared.activity_stopped.notify_waiters();
                }
                return;
            }
            Err(err) => {
                bump(&shared.stats.poll_errors);
                drop(permit);
                let delay = backoff.next_delay();
                if backoff.attempts() == 1 {
                    tracing::warn!(
                        activity = %activity.arn,
                        error = %err,
                        "GetActivityTask failed; retrying with backoff (logged once per streak)"
                    );
                } else {
                    tracing::debug!(activity = %activity.arn, error = %err, ?delay, "GetActivityTask failed again");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shared.shutdown.triggered() => return,
                }
            }
        }
    }
}

/// Runs one task to its end: sandbox, heartbeats, report, one log line.
async fn run_task(shared: &Shared, activity: &Activity, task: ActivityTask) {
    bump(&shared.stats.tasks_started);
    let started = Instant::now();
    let task_id = runtime::task_id(&task.token);
    let interrupt = Interrupt::default();
    let key = shared.next_task_key.fetch_add(1, Ordering::Relaxed);
    shared
        .in_flight
        .lock()
        .unwrap()
        .insert(key, interrupt.clone());
    if shared.drain_expired.load(Ordering::SeqCst) {
        interrupt.trigger(InterruptReason::ShuttingDown);
    }
    let heartbeat = Arc::new(TaskHeartbeat {
        client: shared.client.clone(),
        token: task.token.clone(),
        interrupt: interrupt.clone(),
        last_sent: Mutex::new(None),
        stats: shared.stats.clone(),
        task_id: task_id.clone(),
    });
    let ticker = activity.config.heartbeat_interval.map(|interval| {
        let heartbeat = heartbeat.clone();
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval.0, interval.0);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if heartbeat.send().await.is_err() {
                    return;
                }
            }
        })
    });

    let sandbox_task = Task {
        input: task.input,
        activity_arn: activity.arn.clone(),
        worker_name: shared.worker_name.clone(),
        task_id: task_id.clone(),
        heartbeat: heartbeat.clone(),
        interrupt,
    };
    let (end, task_stats) = activity
        .handler
        .run(sandbox_task, &activity.limits, &activity.grants)
        .await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    shared.in_flight.lock().unwrap().remove(&key);

    let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    let run_ms = task_stats.elapsed.as_secs_f64() * 1e3;
    let (activity_arn, task_id) = (&*activity.arn, task_id.as_str());
    match end {
        TaskEnd::Abandoned(why) => {
            bump(&shared.stats.abandoned);
            tracing::warn!(
                activity = activity_arn,
                task_id,
                outcome = "abandoned",
                reason = %why,
                elapsed_ms,
                "task finished: Step Functions no longer knows it, nothing reported"
            );
        }
        TaskEnd::Report(outcome) => {
            let (status, error) = match &outcome {
                Outcome::Succeeded { .. } => ("succeeded", None),
                Outcome::Failed { error, .. } => ("failed", Some(error.clone())),
            };
            match report(shared, &task.token, &outcome).await {
                Ok(()) => {
                    bump(if outcome.is_success() {
                        &shared.stats.succeeded
                    } else {
                        &shared.stats.failed
                    });
                    tracing::info!(
                        activity = activity_arn,
                        task_id,
                        outcome = status,
                        error,
                        run_ms,
                        elapsed_ms,
                        peak_memory = task_stats.peak_memory,
                        "task finished"
                    );
                }
                Err(ReportError::TaskGone(code)) => {
                    bump(&shared.stats.lost_to_timeout);
                    tracing::warn!(
                        activity = activity_arn,
                        task_id,
                        outcome = status,
                        error,
                        report = %code,
                        elapsed_ms,
                        "task finished but its result was refused: the task had timed out or was gone"
                    );
                }
                Err(ReportError::Undelivered(message)) => {
                    bump(&shared.stats.report_errors);
                    tracing::error!(
                        activity = activity_arn,
                        task_id,
                        outcome = status,
                        error,
                        report_error = %message,
                        result = %serde_json::to_string(&outcome).unwrap_or_default(),
                        elapsed_ms,
                        "task finished but its result could not be reported"
                    );
                }
            }
        }
    }
}

/// Why a report did not land.
enum ReportError {
    /// Step Functions refused it because the task is over (holds the error code).
    TaskGone(String),
    /// It could not be delivered within [`REPORT_DEADLINE`], or was rejected.
    Undelivered(String),
}

/// Sends the outcome, retrying throttling, 5xx and network errors with backoff until
/// [`REPORT_DEADLINE`].
async fn report(shared: &Shared, token: &str, outcome: &Outcome) -> Result<(), ReportError> {
    let deadline = Instant::now() + REPORT_DEADLINE;
    let mut backoff = Backoff::new(REPORT_BACKOFF.0, REPORT_BACKOFF.1);
    loop {
        let sent = match outcome {
            Outcome::Succeeded { output } => shared.client.send_success(token, output).await,
            Outcome::Failed { error, cause } => {
                shared.client.send_failure(token, error, cause).await
            }
        };
        match sent {
            Ok(()) => return Ok(()),
            Err(ApiError::TaskGone(code)) => return Err(ReportError::TaskGone(code)),
            Err(ApiError::InvalidToken(message)) => return Err(ReportError::TaskGone(message)),
            Err(ApiError::Retryable(message)) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return Err(ReportError::Undelivered(format!(
                        "gave up after {} attempts: {message}",
                        backoff.attempts()
                    )));
                }
                tracing::debug!(error = %message, ?delay, "report failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(ApiError::Rejected(message) | ApiError::ActivityGone(message)) => {
                return Err(ReportError::Undelivered(message))
            }
        }
    }
}

/// Heartbeats one task: on the activity's interval, and when its guest asks (rate-limited).
struct TaskHeartbeat {
    client: SfnClient,
    token: String,
    interrupt: Interrupt,
    last_sent: Mutex<Option<Instant>>,
    stats: Arc<WorkerStats>,
    task_id: String,
}

impl TaskHeartbeat {
    /// Sends SendTaskHeartbeat now. `Err` once the task is known to be over; the guest is
    /// then interrupted.
    async fn send(&self) -> Result<(), String> {
        *self.last_sent.lock().unwrap() = Some(Instant::now());
        match self.client.send_heartbeat(&self.token).await {
            Ok(()) => {
                bump(&self.stats.heartbeats_sent);
                Ok(())
            }
            Err(ApiError::TaskGone(code)) => {
                tracing::warn!(task_id = %self.task_id, code = %code, "heartbeat says the task is over; stopping its guest");
                self.interrupt.trigger(InterruptReason::TaskGone(format!(
                    "{code} on SendTaskHeartbeat"
                )));
                Err(format!("the task is over ({code})"))
            }
            Err(ApiError::InvalidToken(message)) => {
                // LocalStack answers this for states without HeartbeatSeconds; AWS for finished
                // tasks. Neither is proof the task is gone: keep going, the report will tell.
                tracing::info!(task_id = %self.task_id, error = %message, "heartbeat got InvalidToken; continuing");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(task_id = %self.task_id, error = %err, "heartbeat failed; continuing");
                Ok(())
            }
        }
    }
}

impl Heartbeat for TaskHeartbeat {
    fn beat(&self) -> BeatFuture<'_> {
        // An interrupted task never gets here: the `heartbeat` host function answers first.
        Box::pin(async move {
            let recent = self
                .last_sent
                .lock()
                .unwrap()
                .is_some_and(|at| at.elapsed() < GUEST_HEARTBEAT_MIN_GAP);
            if recent {
                return Ok(());
            }
            self.send().await
        })
    }
}
