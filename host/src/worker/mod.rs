//! The Step Functions worker: per activity, `pollers` long polls, each holding a free task
//! slot before it polls; each task runs in its own sandbox, is heartbeated, and is reported
//! exactly once; shutdown stops new polls, runs what open polls bring and drains.
//!
//! - [`sfn`]: the Step Functions client and its errors, sorted by what to do about them;
//! - `poller`: one long-poll loop and the activity's slots;
//! - `task`: one task's lifecycle (sandbox, heartbeat, report, log line);
//! - `heartbeat`: SendTaskHeartbeat on an interval and on the guest's request;
//! - `report`: SendTaskSuccess/SendTaskFailure with retries;
//! - [`stats`]: the counters; [`metrics`]: Prometheus metrics and health endpoints;
//!   [`backoff`]: retry delays; [`shutdown`]: signals.

pub mod backoff;
mod heartbeat;
pub mod metrics;
mod poller;
mod report;
pub mod sfn;
pub mod shutdown;
pub mod stats;
mod task;

pub use heartbeat::GUEST_HEARTBEAT_MIN_GAP;
pub use report::REPORT_DEADLINE;
pub use stats::{StatsSnapshot, WorkerStats};

use crate::config::{ActivityConfig, Config};
use crate::sandbox::{Grants, Runtime, TaskHandler, TaskLimits};
use anyhow::{bail, Context as _, Result};
use metrics::{activity_label, Metrics, Readiness};
use sfn::SfnClient;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One served activity: its handler, limits and state.
struct Activity {
    arn: Arc<str>,
    /// The Step Functions client of the activity's account (the worker's, or an assumed role's).
    client: SfnClient,
    handler: Arc<dyn TaskHandler>,
    limits: TaskLimits,
    grants: Grants,
    config: ActivityConfig,
    /// Set when Step Functions says the activity does not exist: its pollers stop.
    stopped: AtomicBool,
    /// Set when a poll of the activity was first answered (readiness).
    first_poll_answered: Arc<AtomicBool>,
}

/// What every poller and task shares.
struct Shared {
    worker_name: Arc<str>,
    stats: Arc<WorkerStats>,
    /// Cancelled on shutdown: no new polls.
    shutdown: CancellationToken,
    /// Cancelled when the drain timeout has ended: running tasks are stopped at once.
    drain_expired: CancellationToken,
    /// Cancelled to stop draining at once: open polls are abandoned too.
    hurry: CancellationToken,
    metrics: Arc<Metrics>,
}

/// The worker: activities with loaded components, a Step Functions client, counters.
pub struct Worker {
    activities: Vec<Arc<Activity>>,
    worker_name: Arc<str>,
    drain_timeout: Duration,
    stats: Arc<WorkerStats>,
    hurry: CancellationToken,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
}

impl Worker {
    /// Validates `config`, then loads and checks every activity's component with `runtime`;
    /// fails before any poll if one does not load, naming the activity.
    pub fn new(runtime: &Runtime, config: &Config, client: SfnClient) -> Result<Worker> {
        config.validate()?;
        let mut handlers: Vec<Arc<dyn TaskHandler>> = Vec::new();
        let mut load_seconds = Vec::new();
        for activity in &config.activities {
            let loading = std::time::Instant::now();
            let guest = runtime
                .load(&activity.component)
                .with_context(|| format!("activity {}: key `component`", activity.arn))?;
            load_seconds.push(loading.elapsed().as_secs_f64());
            handlers.push(Arc::new(guest));
        }
        let worker = Worker::with_handlers(config, handlers, client)?;
        for (activity, seconds) in config.activities.iter().zip(load_seconds) {
            worker
                .metrics
                .component_load_seconds
                .get_or_create(&activity_label(&activity.arn))
                .set(seconds);
        }
        Ok(worker)
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
                    client: client.clone(),
                    handler,
                    limits: activity.limits(),
                    grants: activity.grants(),
                    config: activity.clone(),
                    stopped: AtomicBool::new(false),
                    first_poll_answered: Arc::default(),
                })
            })
            .collect();
        Ok(Worker {
            activities,
            worker_name: config.worker_name().into(),
            drain_timeout: config.drain_timeout(),
            stats: Arc::default(),
            hurry: CancellationToken::new(),
            metrics: Arc::default(),
            metrics_addr: config.worker.metrics_addr,
        })
    }

    /// Cancel it during a shutdown to stop draining at once (the second SIGTERM/SIGINT):
    /// running tasks fail with `Worker.ShuttingDown` right away, and open polls are
    /// abandoned instead of awaited, so a task Step Functions hands to one of them waits for
    /// its timeout (heartbeat or task) before it is retried.
    pub fn hurry(&self) -> CancellationToken {
        self.hurry.clone()
    }

    /// Makes the activity `activity_arn` call Step Functions with `client` (e.g. one whose
    /// credentials come from the activity's `role_arn`) instead of the worker's.
    pub fn use_client_for(&mut self, activity_arn: &str, client: SfnClient) -> Result<()> {
        let activity = self
            .activities
            .iter_mut()
            .find(|activity| &*activity.arn == activity_arn)
            .with_context(|| format!("no activity {activity_arn} in this worker"))?;
        Arc::get_mut(activity)
            .context("the worker is already running")?
            .client = client;
        Ok(())
    }

    /// The worker's metrics (shared; served on `metrics_addr` while it runs).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The worker's counters (shared; they keep counting while it runs).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Serves every activity until `shutdown` is cancelled, then drains. Errors when every
    /// activity has stopped because Step Functions does not know it, or (before any poll)
    /// when the metrics address cannot be listened on.
    pub async fn run(self, shutdown: CancellationToken) -> Result<StatsSnapshot> {
        let stop_serving = CancellationToken::new();
        let _stop_serving_on_return = stop_serving.clone().drop_guard();
        if let Some(addr) = self.metrics_addr {
            let listener = metrics::bind(addr).await?;
            let readiness = Readiness {
                first_poll_answered: self
                    .activities
                    .iter()
                    .map(|activity| activity.first_poll_answered.clone())
                    .collect(),
                draining: shutdown.clone(),
            };
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            tokio::spawn(metrics::serve(
                listener,
                self.metrics.clone(),
                Arc::new(readiness),
                stop_serving,
            ));
        }
        let shared = Arc::new(Shared {
            worker_name: self.worker_name,
            stats: self.stats,
            shutdown: shutdown.clone(),
            drain_expired: CancellationToken::new(),
            hurry: self.hurry.clone(),
            metrics: self.metrics.clone(),
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
                pollers.spawn(poller::poll_loop(
                    shared.clone(),
                    activity.clone(),
                    slots.clone(),
                    tasks.clone(),
                ));
            }
        }

        // Pollers only end on shutdown or when their activity is unknown: if they all end
        // first, no activity is left.
        let stopped_by_errors = tokio::select! {
            biased;
            _ = shutdown.cancelled() => false,
            _ = async { while pollers.join_next().await.is_some() {} } => true,
        };

        // Each poller stops after its current poll returns; what it brings still runs.
        let drain = async {
            while pollers.join_next().await.is_some() {}
            tasks.close();
            tasks.wait().await;
        };
        tokio::pin!(drain);
        let in_time = tokio::select! {
            _ = &mut drain => true,
            _ = tokio::time::sleep(self.drain_timeout) => false,
            _ = shared.hurry.cancelled() => false,
        };
        if !in_time {
            let drain_timeout = humantime::format_duration(self.drain_timeout);
            if shared.hurry.is_cancelled() {
                tracing::warn!(
                    tasks = tasks.len(),
                    "stopping now: failing running tasks with Worker.ShuttingDown and \
                     abandoning open polls (a task handed to one waits for its timeout)"
                );
            } else if tasks.is_empty() {
                tracing::info!(
                    %drain_timeout,
                    "drain timeout reached with no task running; waiting for the open polls to \
                     return (a task they bring still runs, and is failed at once)"
                );
            } else {
                tracing::warn!(
                    tasks = tasks.len(),
                    %drain_timeout,
                    "drain timeout reached: failing running tasks with Worker.ShuttingDown so they are retried"
                );
            }
            shared.drain_expired.cancel();
            drain.await;
        }
        let stats = shared.stats.snapshot();
        stats.log("worker stopped");
        if stopped_by_errors {
            bail!("no activity left to serve: Step Functions does not know any of them (see the errors above)");
        }
        Ok(stats)
    }
}
