//! The Step Functions worker: per activity, `pollers` long polls, each holding a free task
//! slot before it polls; each task runs in its own sandbox, is heartbeated, and is reported
//! exactly once; shutdown stops new polls, runs what open polls bring and drains.
//!
//! - [`sfn`]: the Step Functions client and its errors, sorted by what to do about them;
//! - `poller`: one long-poll loop and the activity's slots;
//! - `task`: one task's lifecycle (sandbox, heartbeat, report, log line);
//! - `heartbeat`: SendTaskHeartbeat on an interval and on the guest's request;
//! - `report`: SendTaskSuccess/SendTaskFailure with retries;
//! - `slots`: the engine's task slots shared out between the activities;
//! - [`reload`]: hot reload (SIGHUP, component files watched), swapped in atomically;
//! - [`stats`]: the counters; [`metrics`]: Prometheus metrics; [`endpoints`]: `/metrics`,
//!   `/healthz` and `/readyz`;
//!   [`backoff`]: retry delays; [`shutdown`]: signals.

pub mod backoff;
pub mod endpoints;
mod heartbeat;
pub mod metrics;
mod poller;
pub mod reload;
mod report;
pub mod sfn;
pub mod shutdown;
mod slots;
pub mod stats;
mod task;

pub use heartbeat::GUEST_HEARTBEAT_MIN_GAP;
pub use reload::{ReloadSource, ReloadTrigger};
pub use report::REPORT_DEADLINE;
pub use stats::{StatsSnapshot, WorkerStats};

use crate::config::{ActivityConfig, ValidConfig};
use crate::sandbox::{Grants, Guest, Runtime, TaskHandler, TaskLimits};
use anyhow::{bail, Context as _, Result};
use endpoints::Readiness;
use metrics::{activity_label, Metrics};
use reload::{FileStamp, ReloadReason};
use sfn::SfnClient;
use slots::SlotPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What an activity's tasks run with, fixed for each task from its start to its report: a
/// reload swaps in a new one for later tasks.
pub(crate) struct ActivitySpec {
    config: ActivityConfig,
    /// The Step Functions client of the activity's account (the worker's, or an assumed role's).
    client: SfnClient,
    handler: Arc<dyn TaskHandler>,
    /// The component behind `handler` and its file's stamp when it was loaded (none for a
    /// handler given directly).
    loaded: Option<(Guest, FileStamp)>,
    limits: TaskLimits,
    grants: Grants,
}

impl ActivitySpec {
    /// The spec of `config`'s tasks; `grants` are built once for the activity (by
    /// [`ActivityConfig::grants`]) and are those its component's start-up was tried under.
    fn new(
        config: ActivityConfig,
        client: SfnClient,
        handler: Arc<dyn TaskHandler>,
        loaded: Option<(Guest, FileStamp)>,
        grants: Grants,
    ) -> ActivitySpec {
        ActivitySpec {
            limits: config.limits(),
            grants,
            config,
            client,
            handler,
            loaded,
        }
    }
}

/// One served activity, from when it is added to when it is removed.
struct Activity {
    arn: Arc<str>,
    /// What its next task runs with.
    spec: RwLock<Arc<ActivitySpec>>,
    /// Its task slots: a poll holds one, then its task until reported.
    slots: Arc<Semaphore>,
    /// Set when Step Functions says the activity does not exist: its pollers stop.
    stopped: AtomicBool,
    /// Set once a poll of the activity was answered, or stayed open without an error for a
    /// second (readiness).
    polling: Arc<AtomicBool>,
}

impl Activity {
    /// What a task received now runs with.
    fn spec(&self) -> Arc<ActivitySpec> {
        self.spec.read().unwrap().clone()
    }
}

/// What every poller and task shares.
struct Shared {
    worker_name: Arc<str>,
    stats: Arc<WorkerStats>,
    /// Cancelled when the drain timeout has ended: running tasks are stopped at once.
    drain_expired: CancellationToken,
    /// Cancelled to stop draining at once: open polls are abandoned too.
    hurry: CancellationToken,
    metrics: Arc<Metrics>,
}

/// The worker: activities with loaded components, a Step Functions client, counters.
pub struct Worker {
    /// The configuration it serves (a reload starts from it).
    config: ValidConfig,
    /// Each activity's spec, in `config` order.
    specs: Vec<Arc<ActivitySpec>>,
    /// Tasks the engine reserved sandboxes for: the activities' slots never add up to more.
    pool_tasks: u32,
    worker_name: Arc<str>,
    drain_timeout: Duration,
    stats: Arc<WorkerStats>,
    hurry: CancellationToken,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    reload: Option<(
        ReloadSource,
        ReloadTrigger,
        mpsc::UnboundedReceiver<ReloadReason>,
    )>,
}

impl Worker {
    /// Loads and checks every activity's component with `runtime`; fails before any poll if
    /// one does not load, naming the activity.
    pub fn new(runtime: &Runtime, config: &ValidConfig, client: SfnClient) -> Result<Worker> {
        let mut specs = Vec::new();
        let mut load_seconds = Vec::new();
        for activity in &config.activities {
            let grants = activity.grants();
            let (guest, stamp, seconds) = reload::load_stamped(runtime, activity, &grants)?;
            load_seconds.push(seconds);
            specs.push(ActivitySpec::new(
                activity.clone(),
                client.clone(),
                Arc::new(guest.clone()),
                Some((guest, stamp)),
                grants,
            ));
        }
        let worker = Worker::from_specs(config, specs, runtime.settings().max_concurrent_tasks)?;
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
        config: &ValidConfig,
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
        let specs = config
            .activities
            .iter()
            .zip(handlers)
            .map(|(activity, handler)| {
                let grants = activity.grants();
                ActivitySpec::new(activity.clone(), client.clone(), handler, None, grants)
            })
            .collect();
        Worker::from_specs(config, specs, config.pool_tasks())
    }

    fn from_specs(
        config: &ValidConfig,
        specs: Vec<ActivitySpec>,
        pool_tasks: u32,
    ) -> Result<Worker> {
        if config.total_concurrency() > pool_tasks {
            bail!(
                "the activities' max_concurrency adds up to {} but the engine has sandboxes for \
                 {pool_tasks} tasks; size it with Config::pool_tasks",
                config.total_concurrency()
            );
        }
        Ok(Worker {
            config: config.clone(),
            specs: specs.into_iter().map(Arc::new).collect(),
            pool_tasks,
            worker_name: config.worker_name().into(),
            drain_timeout: config.drain_timeout(),
            stats: Arc::default(),
            hurry: CancellationToken::new(),
            metrics: Arc::default(),
            metrics_addr: config.worker.metrics_addr,
            reload: None,
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
        let spec = self
            .specs
            .iter_mut()
            .find(|spec| spec.config.arn == activity_arn)
            .with_context(|| format!("no activity {activity_arn} in this worker"))?;
        Arc::get_mut(spec)
            .context("the worker is already running")?
            .client = client;
        Ok(())
    }

    /// Lets the worker reload while it runs: the returned trigger (and, if the configuration
    /// asks for it, a change to a component file) makes it prepare the new state from
    /// `source` and swap it in. See [`reload`].
    pub fn reload_with(&mut self, source: ReloadSource) -> ReloadTrigger {
        let (trigger, requests) = ReloadTrigger::new();
        self.reload = Some((source, trigger.clone(), requests));
        trigger
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
        let readiness = Arc::new(Readiness::new(shutdown.clone()));
        if let Some(addr) = self.metrics_addr {
            let listener = endpoints::bind(addr).await?;
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            tokio::spawn(endpoints::serve(
                listener,
                self.metrics.clone(),
                readiness.clone(),
                stop_serving.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            worker_name: self.worker_name,
            stats: self.stats,
            drain_expired: CancellationToken::new(),
            hurry: self.hurry.clone(),
            metrics: self.metrics.clone(),
        });
        let mut serving = Serving {
            shared: shared.clone(),
            shutdown: shutdown.clone(),
            slot_pool: SlotPool::new(self.pool_tasks),
            activities: HashMap::new(),
            pollers: JoinSet::new(),
            tasks: TaskTracker::new(),
            readiness,
        };
        serving.apply(self.specs.clone());
        let (apply, mut reloads) = mpsc::unbounded_channel();
        let stop_reloading = CancellationToken::new();
        let _stop_reloading_on_return = stop_reloading.clone().drop_guard();
        if let Some((source, trigger, requests)) = self.reload {
            let served = reload::Served {
                config: self.config,
                specs: self.specs,
            };
            tokio::spawn(reload::reload_loop(
                source,
                trigger,
                requests,
                served,
                apply,
                self.metrics.clone(),
                stop_reloading.clone(),
            ));
        }

        // Pollers only end on shutdown, when their activity is removed, or when it is
        // unknown: if they all end first, no activity is left.
        let stopped_by_errors = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break false,
                Some(specs) = reloads.recv() => {
                    serving.apply(specs);
                    Metrics::count(&shared.metrics.reloads, "applied");
                    tracing::info!(activities = serving.activities.len(), "reload applied");
                }
                ended = serving.pollers.join_next() => if ended.is_none() { break true },
            }
        };
        stop_reloading.cancel(); // no reloads while draining

        // Each poller stops after its current poll returns; what it brings still runs.
        let Serving {
            mut pollers, tasks, ..
        } = serving;
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

/// The activities being served, their pollers and tasks.
struct Serving {
    shared: Arc<Shared>,
    /// Cancelled on shutdown: no new polls.
    shutdown: CancellationToken,
    slot_pool: SlotPool,
    activities: HashMap<Arc<str>, ServedActivity>,
    pollers: JoinSet<()>,
    tasks: TaskTracker,
    readiness: Arc<Readiness>,
}

/// One activity being served and what stops its pollers.
struct ServedActivity {
    activity: Arc<Activity>,
    /// Cancelled when the activity is removed (a child of the shutdown token).
    removed: CancellationToken,
    /// One token per poller, cancelled to retire that poller.
    pollers: Vec<CancellationToken>,
}

impl Serving {
    /// Serves `specs` from now on: adds the activities that are new, swaps the spec of those
    /// that changed (their running tasks keep the old one), resizes their slots and pollers,
    /// and removes the activities that are gone (they stop polling; their tasks finish).
    fn apply(&mut self, specs: Vec<Arc<ActivitySpec>>) {
        let arns: std::collections::HashSet<&str> =
            specs.iter().map(|spec| spec.config.arn.as_str()).collect();
        let removed: Vec<Arc<str>> = self
            .activities
            .keys()
            .filter(|arn| !arns.contains(&***arn))
            .cloned()
            .collect();
        for arn in removed {
            let served = self.activities.remove(&arn).expect("listed just above");
            served.removed.cancel();
            let max = served.activity.spec().config.max_concurrency;
            self.slot_pool.resize(&served.activity.slots, max, 0);
            tracing::info!(
                activity = %arn,
                "activity removed: no new polls after the open ones return; its running tasks finish"
            );
        }
        for spec in specs {
            let arn: Arc<str> = spec.config.arn.as_str().into();
            match self.activities.get_mut(&arn) {
                Some(served) => {
                    let old = std::mem::replace(
                        &mut *served.activity.spec.write().unwrap(),
                        spec.clone(),
                    );
                    if Arc::ptr_eq(&old, &spec) {
                        continue;
                    }
                    self.slot_pool.resize(
                        &served.activity.slots,
                        old.config.max_concurrency,
                        spec.config.max_concurrency,
                    );
                    if served.activity.stopped.swap(false, Ordering::SeqCst) {
                        served.pollers.clear(); // they have ended: start afresh
                    }
                    tracing::info!(activity = %arn, "activity updated: new tasks use the new settings");
                    self.set_pollers(&arn, spec.config.pollers);
                }
                None => {
                    let activity = Arc::new(Activity {
                        arn: arn.clone(),
                        slots: Arc::new(Semaphore::new(0)),
                        spec: RwLock::new(spec.clone()),
                        stopped: AtomicBool::new(false),
                        polling: Arc::default(),
                    });
                    self.slot_pool
                        .resize(&activity.slots, 0, spec.config.max_concurrency);
                    tracing::info!(
                        activity = %arn,
                        handler = %spec.handler.describe(),
                        max_concurrency = spec.config.max_concurrency,
                        pollers = spec.config.pollers,
                        worker = %self.shared.worker_name,
                        "serving activity"
                    );
                    self.activities.insert(
                        arn.clone(),
                        ServedActivity {
                            activity,
                            removed: self.shutdown.child_token(),
                            pollers: Vec::new(),
                        },
                    );
                    self.set_pollers(&arn, spec.config.pollers);
                }
            }
        }
        self.readiness.serve(
            self.activities
                .values()
                .map(|served| served.activity.polling.clone())
                .collect(),
        );
    }

    /// Starts or retires pollers of the activity `arn` until it has `count`.
    fn set_pollers(&mut self, arn: &str, count: u32) {
        let served = self.activities.get_mut(arn).expect("a served activity");
        let count = count as usize;
        while served.pollers.len() > count {
            served.pollers.pop().expect("more than count").cancel();
        }
        while served.pollers.len() < count {
            let retire = served.removed.child_token();
            served.pollers.push(retire.clone());
            self.pollers.spawn(poller::poll_loop(
                self.shared.clone(),
                served.activity.clone(),
                retire,
                self.tasks.clone(),
            ));
        }
    }
}
