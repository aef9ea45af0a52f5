//! The Step Functions worker: per activity, `pollers` long polls, each holding a free task
//! slot before it polls; each task runs in its own sandbox, is heartbeated, and is reported
//! exactly once; shutdown stops new polls, runs what open polls bring and drains.
//!
//! - [`sfn`]: the Step Functions client and its errors, sorted by what to do about them;
//! - `activity`: an activity as it is served (its spec, slots, flags) and what every poller
//!   and task shares;
//! - `serving`: the activities being served, a reload's specs applied, the drain;
//! - `poller`: one long-poll loop and the activity's slots;
//! - `task`: one task's lifecycle (sandbox, heartbeat, report, log line);
//! - `heartbeat`: SendTaskHeartbeat on an interval and on the guest's request;
//! - [`journal`]: the task journal that a restarted worker replays;
//! - [`traces`]: OpenTelemetry traces of tasks, opt-in;
//! - `report`: SendTaskSuccess/SendTaskFailure with retries;
//! - `slots`: the engine's task slots shared out between the activities;
//! - `file_stamp`: a component file's identity (did it change since it was loaded?);
//! - `loading`: components loaded, checked and stamped, at start-up and on reload, and a
//!   reload's new state prepared;
//! - [`reload`]: hot reload (SIGHUP, component files watched), swapped in atomically;
//! - [`stats`]: the counters; [`metrics`]: Prometheus metrics; [`endpoints`]: `/metrics`,
//!   `/healthz` and `/readyz`;
//!   [`backoff`]: retry delays; [`shutdown`]: signals.

mod activity;
pub mod backoff;
pub mod endpoints;
mod file_stamp;
mod heartbeat;
pub mod journal;
mod loading;
pub mod metrics;
mod poller;
pub mod reload;
mod report;
mod serving;
pub mod sfn;
pub mod shutdown;
mod slots;
pub mod stats;
mod task;
pub mod traces;

pub use heartbeat::GUEST_HEARTBEAT_MIN_GAP;
pub use reload::{ReloadSource, ReloadTrigger};
pub use report::REPORT_DEADLINE;
pub use stats::{StatsSnapshot, WorkerStats};

use crate::config::ValidConfig;
use crate::sandbox::{Runtime, TaskHandler};
use activity::{ActivitySpec, Shared};
use anyhow::{bail, Context as _, Result};
use endpoints::Readiness;
use metrics::{activity_label, Metrics};
use reload::ReloadReason;
use serving::Serving;
use sfn::SfnClient;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    hurry: CancellationToken,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
    /// The worker's own Step Functions client (for journaled tasks of activities it no
    /// longer serves).
    client: SfnClient,
    /// The task journal, and what an earlier worker left in it (replayed before polling).
    journal: Option<(Arc<journal::Journal>, journal::Unfinished)>,
    /// The exporter of task traces, if traces are on.
    traces: Option<Arc<traces::Traces>>,
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
            let grants = activity.grants(&config.worker);
            let (guest, stamp, seconds) = loading::load_stamped(runtime, activity, &grants)?;
            load_seconds.push(seconds);
            specs.push(ActivitySpec::for_guest(
                activity.clone(),
                client.clone(),
                (guest, stamp),
                grants,
            ));
        }
        let worker = Worker::from_specs(
            config,
            specs,
            client,
            runtime.settings().max_concurrent_tasks,
        )?;
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
                let grants = activity.grants(&config.worker);
                ActivitySpec::new(activity.clone(), client.clone(), handler, None, grants)
            })
            .collect();
        Worker::from_specs(config, specs, client, config.pool_tasks())
    }

    fn from_specs(
        config: &ValidConfig,
        specs: Vec<ActivitySpec>,
        client: SfnClient,
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
            hurry: CancellationToken::new(),
            metrics: Arc::default(),
            metrics_addr: config.worker.metrics_addr,
            client,
            journal: None,
            traces: None,
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

    /// Keeps a task journal at `path` (a file, or a directory for [`journal::FILE_NAME`]):
    /// opens and locks it now (an error if another worker holds it); what an earlier worker
    /// left in it is replayed when the worker runs, before its first poll.
    pub fn open_journal(&mut self, path: &std::path::Path) -> Result<()> {
        let (journal, unfinished) = journal::Journal::open(path, &self.worker_name, &self.metrics)?;
        if !unfinished.is_empty() {
            tracing::info!(
                journal = %journal.path().display(),
                tasks = unfinished.len(),
                "the task journal holds tasks an earlier worker left; they are reported before polling"
            );
        }
        self.journal = Some((Arc::new(journal), unfinished));
        Ok(())
    }

    /// Records a trace of every task with `traces` (see [`traces`]).
    pub fn trace_with(&mut self, traces: Arc<traces::Traces>) {
        self.traces = Some(traces);
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

    /// The worker's totals (read off its metrics; they keep counting while it runs).
    pub fn stats(&self) -> WorkerStats {
        WorkerStats(self.metrics.clone())
    }

    /// Serves every activity until `shutdown` is cancelled, then drains. Errors when every
    /// activity has stopped because Step Functions does not know it, or (before any poll)
    /// when an activity's grants cannot be readied (a secret that cannot be fetched) or the
    /// metrics address cannot be listened on.
    pub async fn run(self, shutdown: CancellationToken) -> Result<StatsSnapshot> {
        let stop_endpoints = CancellationToken::new();
        let _stop_endpoints_on_return = stop_endpoints.clone().drop_guard();
        let readiness = Arc::new(Readiness::new(shutdown.clone()));
        if let Some(addr) = self.metrics_addr {
            let listener = endpoints::bind(addr).await?;
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            tokio::spawn(endpoints::serve(
                listener,
                self.metrics.clone(),
                readiness.clone(),
                stop_endpoints.clone(),
            ));
        }
        // Grants readied (secrets fetched) with /healthz already served, /readyz not yet.
        let readying = async {
            for spec in &self.specs {
                spec.ready(&self.metrics).await?;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            readied = readying => readied?,
            _ = shutdown.cancelled() => {
                tracing::info!("shut down before polling (while readying the activities' grants)");
                return Ok(WorkerStats(self.metrics.clone()).snapshot());
            }
        }
        let journal = match self.journal {
            Some((journal, unfinished)) => {
                let served_client = |activity: &str| {
                    let spec = self.specs.iter().find(|spec| spec.config.arn == activity);
                    spec.map(|spec| spec.client.clone())
                };
                let replaying = journal::replay(
                    &journal,
                    unfinished,
                    served_client,
                    &self.client,
                    &self.metrics,
                );
                tokio::select! {
                    () = replaying => {}
                    _ = shutdown.cancelled() => {
                        tracing::info!("shut down while replaying the journal; what is left stays in it");
                        journal.close();
                        return Ok(WorkerStats(self.metrics.clone()).snapshot());
                    }
                }
                Some(journal)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            worker_name: self.worker_name,
            drain_expired: CancellationToken::new(),
            hurry: self.hurry.clone(),
            metrics: self.metrics.clone(),
            journal: journal.clone(),
            traces: self.traces.clone(),
        });
        let mut serving = Serving::new(shared.clone(), &shutdown, self.pool_tasks, readiness);
        serving.apply(self.specs.clone());

        let (apply, mut reloads) = mpsc::unbounded_channel();
        let stop_reloading = CancellationToken::new();
        if let Some((source, trigger, requests)) = self.reload {
            let served = loading::Served {
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
        let stopped_by_errors = serving.serve_until(&shutdown, &mut reloads).await;
        stop_reloading.cancel(); // no reloads while draining

        serving.drain(self.drain_timeout).await;
        if let Some(journal) = journal {
            journal.close();
        }
        let stats = WorkerStats(self.metrics.clone()).snapshot();
        stats.log("worker stopped");
        if stopped_by_errors {
            bail!("no activity left to serve: Step Functions does not know any of them (see the errors above)");
        }
        Ok(stats)
    }
}
