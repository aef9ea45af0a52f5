//! Components loaded once, checked against the `sfn:activity/handler` world and
//! pre-instantiated ([`Guest`], made by [`crate::sandbox::Runtime`]): each task runs in a
//! fresh store of one ([`crate::sandbox::Instances`] keeps ready and warm ones for an
//! activity).

use crate::sandbox::bindings::HandlerPre;
use crate::sandbox::capability::Grants;
use crate::sandbox::engine::EpochTicker;
use crate::sandbox::limits::TaskLimits;
use crate::sandbox::outcome::{Outcome, TaskEnd, INSTANTIATION_FAILED};
use crate::sandbox::run::{self, HandlerFuture, Task, TaskHandler, TaskStats};
use crate::sandbox::store::TaskState;
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The world every guest must implement, as named in `wit/`.
pub const WORLD: &str = "sfn:activity/handler@0.1.0";

/// A component compiled, checked against the world and pre-instantiated: ready to run
/// tasks, each in a fresh store. Cheap to clone.
#[derive(Clone)]
pub struct Guest {
    path: Arc<Path>,
    /// The key of its component among the runtime's loaded components.
    artefact: Option<Arc<str>>,
    pre: HandlerPre<TaskState>,
    /// Keeps the epoch ticker running for as long as the guest can run tasks.
    ticks: EpochTicker,
    /// The engine's sandboxes for ready instances ([`crate::sandbox::instances`]).
    ready_sandboxes: Arc<Semaphore>,
}

impl Guest {
    /// A guest of the component at `path`, pre-instantiated as `pre`; `ticks` keeps the
    /// epoch ticker running for as long as it may run tasks; its ready instances use
    /// `ready_sandboxes`.
    pub(crate) fn new(
        path: &Path,
        pre: HandlerPre<TaskState>,
        ticks: EpochTicker,
        ready_sandboxes: Arc<Semaphore>,
    ) -> Guest {
        Guest {
            path: path.into(),
            artefact: None,
            pre,
            ticks,
            ready_sandboxes,
        }
    }

    /// The pre-instantiated component.
    pub(crate) fn pre(&self) -> &HandlerPre<TaskState> {
        &self.pre
    }

    /// The epoch ticker a running guest claims.
    pub(crate) fn ticks(&self) -> &EpochTicker {
        &self.ticks
    }

    /// The engine's sandboxes for ready instances.
    pub(crate) fn ready_sandboxes(&self) -> Arc<Semaphore> {
        self.ready_sandboxes.clone()
    }

    /// The same guest, known among the runtime's loaded components by `artefact`.
    pub(crate) fn with_artefact(mut self, artefact: Option<Arc<str>>) -> Guest {
        self.artefact = artefact;
        self
    }

    /// The key of its component among the runtime's loaded components, if it has one.
    pub(crate) fn artefact(&self) -> Option<&str> {
        self.artefact.as_deref()
    }

    /// Runs one task in a fresh, isolated store and returns how it ended.
    pub async fn run(
        &self,
        task: Task,
        limits: &TaskLimits,
        grants: &Grants,
    ) -> (TaskEnd, TaskStats) {
        let _ticking = self.ticks.enter();
        let (end, stats, _) = run::run_task(&self.pre, task, limits, grants, None, None).await;
        (end, stats)
    }

    /// Instantiates the component once, as a task would, without calling `handle`: refuses
    /// a component whose start-up code (a start function) traps, runs past `limits.timeout`
    /// or allocates past `limits.memory_limit`, since every task would fail the same way.
    /// Runs on a thread of its own, so it may be called from any context.
    pub fn check_start_up(
        &self,
        activity_arn: &str,
        limits: &TaskLimits,
        grants: &Grants,
    ) -> Result<()> {
        let _ticking = self.ticks.enter();
        let instantiated = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|runtime| {
                            runtime.block_on(run::instantiate_once(
                                &self.pre,
                                activity_arn.into(),
                                limits,
                                grants,
                            ))
                        })
                })
                .join()
        });
        let failed = match instantiated {
            Err(_) => anyhow::bail!("{}: the load check's thread panicked", self.path.display()),
            Ok(Err(err)) => {
                return Err(anyhow::Error::from(err).context("starting the load check's runtime"))
            }
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(failed))) => failed,
        };
        let Outcome::Failed { error, cause } = failed else {
            unreachable!("instantiation fails or succeeds, it never reports output")
        };
        if error == INSTANTIATION_FAILED {
            // Not the guest's doing (e.g. every sandbox of the pool is running a task).
            tracing::warn!(component = %self.path.display(), %cause, "could not try the component's start-up");
            return Ok(());
        }
        anyhow::bail!(
            "{} fails while it is instantiated, before `handle` runs (in its start-up code, \
             e.g. a start function), so every task would fail with {error}: {cause}\n\
             fix: correct the component's start-up code (a start function or static \
             initialiser must not trap, must finish within the activity's timeout of {} and \
             fit its memory_limit of {} bytes), then rebuild it",
            self.path.display(),
            humantime::format_duration(limits.timeout),
            limits.memory_limit
        )
    }
}

impl TaskHandler for Guest {
    fn run<'a>(
        &'a self,
        task: Task,
        limits: &'a TaskLimits,
        grants: &'a Grants,
    ) -> HandlerFuture<'a> {
        Box::pin(Guest::run(self, task, limits, grants))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
