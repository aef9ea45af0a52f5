//! An activity as the worker serves it: its spec (what a task runs with, swapped by a
//! reload), its slots and flags, and what every poller and task shares.

use crate::config::ActivityConfig;
use crate::sandbox::{Grants, Guest, Instances, TaskHandler, TaskLimits};
use crate::worker::file_stamp::FileStamp;
use crate::worker::metrics::Metrics;
use crate::worker::sfn::SfnClient;
use anyhow::Context as _;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What an activity's tasks run with, fixed for each task from its start to its report: a
/// reload swaps in a new one for later tasks.
pub(crate) struct ActivitySpec {
    pub(crate) config: ActivityConfig,
    /// The Step Functions client of the activity's account (the worker's, or an assumed role's).
    pub(crate) client: SfnClient,
    pub(crate) handler: Arc<dyn TaskHandler>,
    /// The component behind `handler` and its file's stamp when it was loaded (none for a
    /// handler given directly).
    pub(crate) loaded: Option<(Guest, FileStamp)>,
    pub(crate) limits: TaskLimits,
    pub(crate) grants: Grants,
    /// Bounds the reports its tasks send at once (`max_concurrency` of them): a task whose
    /// guest has ended waits here, still holding its slot, while that many are in flight.
    pub(crate) report_slots: Arc<Semaphore>,
}

impl ActivitySpec {
    /// The spec of `config`'s tasks; `grants` are built once for the activity (by
    /// [`ActivityConfig::grants`]) and are those its component's start-up was tried under.
    pub(crate) fn new(
        config: ActivityConfig,
        client: SfnClient,
        handler: Arc<dyn TaskHandler>,
        loaded: Option<(Guest, FileStamp)>,
        grants: Grants,
    ) -> ActivitySpec {
        ActivitySpec {
            report_slots: Arc::new(Semaphore::new(config.max_concurrency as usize)),
            limits: config.limits(),
            grants,
            config,
            client,
            handler,
            loaded,
        }
    }
}

impl ActivitySpec {
    /// The spec of `config`'s tasks run by its loaded component `guest` (its file stamped
    /// `stamp`), whose instances are kept as its instance settings say.
    pub(crate) fn for_guest(
        config: ActivityConfig,
        client: SfnClient,
        (guest, stamp): (Guest, FileStamp),
        grants: Grants,
    ) -> ActivitySpec {
        let instances = Instances::new(
            guest.clone(),
            config.arn.as_str().into(),
            config.limits(),
            grants.clone(),
            config.instance_policy(),
        );
        ActivitySpec::new(
            config,
            client,
            Arc::new(instances),
            Some((guest, stamp)),
            grants,
        )
    }

    /// Readies its grants (fetches its secrets) before its tasks run; the error names the
    /// activity.
    pub(crate) async fn ready(&self, metrics: &Metrics) -> anyhow::Result<()> {
        let arn: Arc<str> = self.config.arn.as_str().into();
        self.grants
            .ready(&arn, &metrics.capabilities)
            .await
            .with_context(|| format!("activity {arn}"))
    }
}

/// One served activity, from when it is added to when it is removed.
pub(crate) struct Activity {
    pub(crate) arn: Arc<str>,
    /// What its next task runs with.
    pub(crate) spec: RwLock<Arc<ActivitySpec>>,
    /// Its task slots: a poll holds one, then its task until its guest has ended.
    pub(crate) slots: Arc<Semaphore>,
    /// Set when Step Functions says the activity does not exist: its pollers stop.
    pub(crate) stopped: AtomicBool,
    /// Set once a poll of the activity was answered, or stayed open without an error for a
    /// second (readiness).
    pub(crate) polling: Arc<AtomicBool>,
}

impl Activity {
    /// What a task received now runs with.
    pub(crate) fn spec(&self) -> Arc<ActivitySpec> {
        self.spec.read().unwrap().clone()
    }
}

/// What every poller and task shares.
pub(crate) struct Shared {
    pub(crate) worker_name: Arc<str>,
    /// Cancelled when the drain timeout has ended: running tasks are stopped at once.
    pub(crate) drain_expired: CancellationToken,
    /// Cancelled to stop draining at once: open polls are abandoned too.
    pub(crate) hurry: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    /// The task journal, if the worker keeps one.
    pub(crate) journal: Option<Arc<crate::worker::journal::Journal>>,
    /// The exporter of task traces, if traces are on.
    pub(crate) traces: Option<Arc<crate::worker::traces::Traces>>,
}
