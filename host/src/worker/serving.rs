//! The activities being served: their pollers, slots and tasks; a reload's specs applied
//! to them; serving until shutdown, then draining.

use crate::worker::activity::{Activity, ActivitySpec, Shared};
use crate::worker::endpoints::Readiness;
use crate::worker::metrics::Metrics;
use crate::worker::poller;
use crate::worker::slots::SlotPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The activities being served, their pollers and tasks.
pub(crate) struct Serving {
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
    /// Nothing served yet, with the engine's `pool_tasks` slots to share out; `shutdown`
    /// stops every poller.
    pub(crate) fn new(
        shared: Arc<Shared>,
        shutdown: &CancellationToken,
        pool_tasks: u32,
        readiness: Arc<Readiness>,
    ) -> Serving {
        Serving {
            shared,
            shutdown: shutdown.clone(),
            slot_pool: SlotPool::new(pool_tasks),
            activities: HashMap::new(),
            pollers: JoinSet::new(),
            tasks: TaskTracker::new(),
            readiness,
        }
    }

    /// Serves, applying each reload's specs as they come, until `shutdown`; `true` when
    /// every poller ended first (pollers only end on shutdown, when their activity is
    /// removed, or when Step Functions does not know it: then no activity is left).
    pub(crate) async fn serve_until(
        &mut self,
        shutdown: &CancellationToken,
        reloads: &mut mpsc::UnboundedReceiver<Vec<Arc<ActivitySpec>>>,
    ) -> bool {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return false,
                Some(specs) = reloads.recv() => {
                    self.apply(specs);
                    Metrics::count(&self.shared.metrics.reloads, "applied");
                    tracing::info!(activities = self.activities.len(), "reload applied");
                }
                ended = self.pollers.join_next() => if ended.is_none() { return true },
            }
        }
    }

    /// Drains: each poller stops after its current poll returns (what it brings still
    /// runs), and the tasks finish. Past `drain_timeout`, or at once when the worker is
    /// hurried, running tasks are failed with `Worker.ShuttingDown`.
    pub(crate) async fn drain(self, drain_timeout: Duration) {
        let Serving {
            mut pollers,
            tasks,
            shared,
            ..
        } = self;
        let drain = async {
            while pollers.join_next().await.is_some() {}
            tasks.close();
            tasks.wait().await;
        };
        tokio::pin!(drain);
        let in_time = tokio::select! {
            _ = &mut drain => true,
            _ = tokio::time::sleep(drain_timeout) => false,
            _ = shared.hurry.cancelled() => false,
        };
        if in_time {
            return;
        }
        let drain_timeout = humantime::format_duration(drain_timeout);
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

    /// Serves `specs` from now on: adds the activities that are new, swaps the spec of those
    /// that changed (their running tasks keep the old one), resizes their slots and pollers,
    /// and removes the activities that are gone (they stop polling; their tasks finish).
    pub(crate) fn apply(&mut self, specs: Vec<Arc<ActivitySpec>>) {
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
            served.activity.spec().handler.retire();
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
                    old.handler.retire();
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
        self.shared
            .metrics
            .set_slots(self.activities.iter().map(|(arn, served)| {
                (
                    arn.to_string(),
                    served.activity.spec().config.max_concurrency,
                )
            }));
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
