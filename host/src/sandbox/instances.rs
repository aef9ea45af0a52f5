//! An activity's instances of its component ([`Instances`], the activity's task handler):
//! where each task's instance comes from, and what happens to it after.
//!
//! - **Ready** (`ready_instances`, default 1): fresh instances made ahead of tasks, while
//!   the worker waits on its polls, so a task's latency excludes instantiation. Never used
//!   before: a task given one is as isolated as with an instance made for it. Its start-up
//!   runs outside the activity's CPU share (within its timeout and memory limit), so that
//!   an instance waiting for a task is not one of the activity's running guests. Each uses one
//!   of the engine's [`READY_SANDBOXES`](crate::sandbox::limits::READY_SANDBOXES), reserved beside the task slots, so ready instances
//!   never take a sandbox a task needs; without a free one, none is made.
//! - **Warm** (`instance_reuse = N`, opt-in): an instance that served a task serves up to N
//!   of its activity's tasks, one after another; one idle for `instance_idle_timeout` is
//!   dropped. Only after the guest returned (`ok` or `err`) with no memory grow refused and
//!   no interrupt; after a trap, a timeout, memory exhaustion, an interrupt or a failed setup
//!   it is dropped. Each activity spec has its own: never shared between activities, or with
//!   an activity's tasks after a reload replaced its spec.
//! - Otherwise a task makes its own instance, as [`Guest::run`] does.
//!
//! Every task still gets its own capabilities (identity, heartbeat, interrupt, counters),
//! deadline and output tails ([`crate::sandbox::run::Instance`]); what survives in a warm
//! instance is the guest's own memory: its globals and caches.

use crate::sandbox::bindings::HandlerPre;
use crate::sandbox::capability::Grants;
use crate::sandbox::component::Guest;
use crate::sandbox::limits::TaskLimits;
use crate::sandbox::run::{self, HandlerFuture, Instance, Parking, Task, TaskHandler, TaskStats};
use crate::sandbox::store::TaskState;
use crate::sandbox::TaskEnd;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Default `instance_idle_timeout`: how long a warm instance waits for a task.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `ready_instances`.
pub const DEFAULT_READY_INSTANCES: u32 = 1;

/// How an activity's tasks get their instances (its `instance_reuse`,
/// `instance_idle_timeout` and `ready_instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstancePolicy {
    /// Tasks one instance serves, one after another; 1 (the default) is a fresh instance
    /// per task.
    pub reuse: u32,
    /// How long a warm instance is kept without a task.
    pub idle_timeout: Duration,
    /// Fresh instances kept ready ahead of tasks.
    pub ready: u32,
}

impl Default for InstancePolicy {
    fn default() -> InstancePolicy {
        InstancePolicy {
            reuse: 1,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ready: DEFAULT_READY_INSTANCES,
        }
    }
}

/// Where a task's instance came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InstanceSource {
    /// Made for the task.
    #[default]
    Fresh,
    /// Made fresh ahead of the task.
    Ready,
    /// Kept from an earlier task of the activity.
    Warm,
}

impl InstanceSource {
    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            InstanceSource::Fresh => "fresh",
            InstanceSource::Ready => "ready",
            InstanceSource::Warm => "warm",
        }
    }
}

/// One activity's instances of its guest, under its [`InstancePolicy`]: the task handler
/// of an activity the worker serves.
pub struct Instances {
    pool: Arc<Pool>,
}

struct Pool {
    guest: Guest,
    activity_arn: Arc<str>,
    limits: TaskLimits,
    /// How its instances wait for a task, made once.
    parking: Parking,
    policy: InstancePolicy,
    /// The engine's sandboxes for ready instances, shared by every activity.
    ready_sandboxes: Arc<Semaphore>,
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    /// Warm instances, the most recently used last.
    warm: Vec<Instance>,
    /// Ready instances, each with its sandbox.
    ready: Vec<(Instance, OwnedSemaphorePermit)>,
    /// Ready instances being made now.
    making: u32,
    /// Set once the activity's spec is replaced or removed: nothing is kept any more.
    retired: bool,
}

impl Instances {
    /// The instances of `guest` for the activity `activity_arn`'s tasks under `limits` and
    /// `grants`, kept as `policy` says; its first ready instances are made at once when
    /// called within a tokio runtime (otherwise with the first task).
    pub fn new(
        guest: Guest,
        activity_arn: Arc<str>,
        limits: TaskLimits,
        grants: Grants,
        policy: InstancePolicy,
    ) -> Instances {
        let pool = Arc::new(Pool {
            ready_sandboxes: guest.ready_sandboxes(),
            parking: Parking::new(activity_arn.clone(), &grants, policy.reuse),
            guest,
            activity_arn,
            limits,
            policy,
            kept: Mutex::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            Pool::top_up_ready(&pool);
            if policy.reuse > 1 {
                tokio::spawn(drop_idle(Arc::downgrade(&pool)));
            }
        }
        Instances { pool }
    }

    /// Ready and warm instances held now (for tests and benchmarks).
    pub fn kept(&self) -> (usize, usize) {
        let kept = self.pool.kept.lock().unwrap();
        (kept.ready.len(), kept.warm.len())
    }
}

impl Pool {
    fn pre(&self) -> &HandlerPre<TaskState> {
        self.guest.pre()
    }

    /// An instance for the next task: the most recently used warm one, else a ready one
    /// (and another made in its place).
    fn take(self: &Arc<Pool>) -> (Option<Instance>, InstanceSource) {
        let mut kept = self.kept.lock().unwrap();
        if let Some(instance) = kept.warm.pop() {
            return (Some(instance), InstanceSource::Warm);
        }
        // The taken instance's sandbox is released first, so that its replacement can have it.
        let ready = kept.ready.pop().map(|(instance, _sandbox)| instance);
        drop(kept);
        Pool::top_up_ready(self);
        match ready {
            Some(instance) => (Some(instance), InstanceSource::Ready),
            None => (None, InstanceSource::Fresh),
        }
    }

    /// Keeps `instance` warm for a later task, unless the pool is retired.
    fn give_back(&self, instance: Instance) {
        let mut kept = self.kept.lock().unwrap();
        if !kept.retired {
            kept.warm.push(instance);
        }
    }

    /// Starts making ready instances until `policy.ready` are kept or being made, each as
    /// a free ready sandbox allows.
    fn top_up_ready(pool: &Arc<Pool>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut kept = pool.kept.lock().unwrap();
        while !kept.retired && kept.ready.len() as u32 + kept.making < pool.policy.ready {
            let Ok(sandbox) = pool.ready_sandboxes.clone().try_acquire_owned() else {
                return;
            };
            kept.making += 1;
            runtime.spawn(make_ready(Arc::downgrade(pool), sandbox));
        }
    }
}

/// Makes one ready instance for `pool` in `sandbox`: instantiated (its start-up code run)
/// under a placeholder task, then kept for the next task. One whose start-up fails is
/// dropped: the next task makes its own and reports the failure.
async fn make_ready(pool: Weak<Pool>, sandbox: OwnedSemaphorePermit) {
    let Some(pool) = pool.upgrade() else {
        return;
    };
    let _ticking = pool.guest.ticks().enter();
    let deadline = Instant::now() + pool.limits.timeout;
    // As it will wait for its task: outside the activity's CPU share (the share caps a
    // computing neighbour while an activity has a running guest).
    let Parking { task, grants, .. } = &pool.parking;
    let made = match Instance::new(pool.pre(), task, &pool.limits, grants, deadline) {
        Ok(mut instance) => match instance.instantiate(pool.pre()).await {
            Ok(()) => Some(instance),
            Err(stop) => {
                tracing::debug!(activity = %pool.activity_arn, ?stop, "a ready instance failed to start; tasks make their own");
                None
            }
        },
        Err(err) => {
            tracing::debug!(activity = %pool.activity_arn, error = %format!("{err:#}"), "could not set up a ready instance");
            None
        }
    };
    let mut kept = pool.kept.lock().unwrap();
    kept.making -= 1;
    if let (Some(instance), false) = (made, kept.retired) {
        kept.ready.push((instance, sandbox));
    }
}

/// Drops warm instances idle for the pool's `idle_timeout`, checking every quarter of it,
/// until the pool is gone.
async fn drop_idle(pool: Weak<Pool>) {
    let Some(timeout) = pool.upgrade().map(|pool| pool.policy.idle_timeout) else {
        return;
    };
    let every = (timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let expired: Vec<Instance> = {
            let mut kept = pool.kept.lock().unwrap();
            let (expired, warm) = std::mem::take(&mut kept.warm)
                .into_iter()
                .partition(|instance| instance.idle_since().elapsed() >= timeout);
            kept.warm = warm;
            expired
        };
        drop(expired); // outside the lock
    }
}

impl TaskHandler for Instances {
    fn run<'a>(
        &'a self,
        task: Task,
        limits: &'a TaskLimits,
        grants: &'a Grants,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let pool = &self.pool;
            let _ticking = pool.guest.ticks().enter();
            let (instance, source) = pool.take();
            let (end, mut stats, kept): (TaskEnd, TaskStats, _) = run::run_task(
                pool.pre(),
                task,
                limits,
                grants,
                instance,
                Some(&pool.parking),
            )
            .await;
            stats.instance = source;
            if let Some(instance) = kept {
                pool.give_back(instance);
            }
            (end, stats)
        })
    }

    fn describe(&self) -> String {
        self.pool.guest.describe()
    }

    fn retire(&self) {
        let dropped = {
            let mut kept = self.pool.kept.lock().unwrap();
            kept.retired = true;
            (
                std::mem::take(&mut kept.warm),
                std::mem::take(&mut kept.ready),
            )
        };
        drop(dropped); // outside the lock
    }
}
