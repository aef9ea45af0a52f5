//! Components: one engine and linker for the process ([`Runtime`]), and components loaded
//! once, checked against the `sfn:activity/handler` world and pre-instantiated ([`Guest`]).

use crate::sandbox::artefacts::Artefacts;
use crate::sandbox::bindings::HandlerPre;
use crate::sandbox::capability::{self, Grants};
use crate::sandbox::engine::{build_engine, EngineSettings, EpochTicker};
use crate::sandbox::limits::TaskLimits;
use crate::sandbox::outcome::{Outcome, TaskEnd, INSTANTIATION_FAILED};
use crate::sandbox::run::{self, HandlerFuture, Task, TaskHandler, TaskStats};
use crate::sandbox::store::TaskState;
use anyhow::{Context as _, Result};
use std::path::Path;
use std::sync::Arc;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

/// The world every guest must implement, as named in `wit/`.
pub const WORLD: &str = "sfn:activity/handler@0.1.0";

/// The activity name a start-up check outside any activity runs under (`check`, `compile`).
const CHECK_ACTIVITY: &str = "sfn-wasm-worker-check";

/// The engine, the linker holding every host function, and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    settings: EngineSettings,
    artefacts: Artefacts,
    linker: Linker<TaskState>,
    ticker: EpochTicker,
}

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
}

/// One import of a component and whether this host provides it.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The import's name, e.g. `wasi:cli/stdout@0.2.6`.
    pub name: String,
    /// `instance`, `func`, `type`...
    pub kind: &'static str,
    /// Who provides it, or why nobody does.
    pub provider: &'static str,
}

/// What `check` tells about a component.
#[derive(Debug)]
pub struct ComponentReport {
    /// Every import.
    pub imports: Vec<ImportReport>,
    /// Every export name.
    pub exports: Vec<String>,
    /// `Ok` when the component can run here; otherwise what is wrong and how to fix it.
    pub verdict: Result<()>,
}

impl Runtime {
    /// Builds the engine for `settings`, starts the epoch ticker and links every
    /// capability's host functions.
    pub fn new(settings: &EngineSettings) -> Result<Runtime> {
        let engine = build_engine(settings)?;
        let mut linker = Linker::new(&engine);
        capability::link_all(&mut linker)?;
        let ticker = EpochTicker::start(&engine)?;
        Ok(Runtime {
            artefacts: Artefacts::new(&engine, &settings.cache),
            engine,
            settings: settings.clone(),
            linker,
            ticker,
        })
    }

    /// The engine (shared by every component and store in the process).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What the engine was sized for (its pool of sandboxes).
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Compiles (or loads from the cache) the component at `path` and checks it against the
    /// world: the error names the missing or mismatched item and the fix.
    pub fn load(&self, path: &Path) -> Result<Guest> {
        let (component, artefact) = self.artefacts.component(path)?;
        let mut guest = self.pre_instantiate(path, &component)?;
        guest.artefact = artefact;
        Ok(guest)
    }

    /// Forgets every loaded component but those of `in_use` (after a reload replaced some):
    /// a replaced one is freed when its last task ends, and loaded again if it comes back.
    pub fn keep_loaded<'a>(&self, in_use: impl IntoIterator<Item = &'a Guest>) {
        let keys: std::collections::HashSet<&str> = in_use
            .into_iter()
            .filter_map(|guest| guest.artefact.as_deref())
            .collect();
        self.artefacts.retain(|key| keys.contains(key));
    }

    /// Compiles `path` and reports its imports, exports and whether it can run here (its
    /// start-up tried under `limits`, with no grants).
    pub fn inspect(&self, path: &Path, limits: &TaskLimits) -> Result<ComponentReport> {
        let (component, _) = self.artefacts.component(path)?;
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(name, item)| ImportReport {
                name: name.to_string(),
                kind: item_kind(&item.ty),
                provider: capability::provider_of(name),
            })
            .collect();
        let exports = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let verdict = self.pre_instantiate_and_start(path, &component, limits);
        Ok(ComponentReport {
            imports,
            exports,
            verdict,
        })
    }

    /// How many distinct components (by their bytes) this runtime has loaded: activities
    /// that use the same component share one.
    pub fn loaded_components(&self) -> usize {
        self.artefacts.loaded()
    }

    /// The precompiled artefact of the component at `path`, after checking it against the
    /// world and trying its start-up under `limits`, for `sfn-wasm-worker compile`.
    pub fn precompile(&self, path: &Path, limits: &TaskLimits) -> Result<Vec<u8>> {
        let (artefact, component) = self.artefacts.precompile(path)?;
        self.pre_instantiate_and_start(path, &component, limits)?;
        Ok(artefact)
    }

    /// [`Runtime::pre_instantiate`], then the start-up tried under `limits` with no grants,
    /// for the commands that load a component outside any activity (`check`, `compile`).
    fn pre_instantiate_and_start(
        &self,
        path: &Path,
        component: &Component,
        limits: &TaskLimits,
    ) -> Result<()> {
        self.pre_instantiate(path, component)?.check_start_up(
            CHECK_ACTIVITY,
            limits,
            &Grants::default(),
        )
    }

    fn pre_instantiate(&self, path: &Path, component: &Component) -> Result<Guest> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{} imports something this host does not provide; guests may import \
                 sfn:activity/host@0.1.0 and WASI p2 (wasi:*@0.2.x) only",
                    path.display()
                )
            })?;
        let pre = HandlerPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
            format!(
                "{} does not implement the world {WORLD}: it must export \
                 `handle: func(input: string, context: task-context) -> result<string, task-error>`; \
                 rebuild it against this version's wit/ directory",
                path.display()
            )
        })?;
        Ok(Guest {
            path: path.into(),
            artefact: None,
            pre,
            ticks: self.ticker.clone(),
        })
    }
}

impl Guest {
    /// Runs one task in a fresh, isolated store and returns how it ended.
    pub async fn run(
        &self,
        task: Task,
        limits: &TaskLimits,
        grants: &Grants,
    ) -> (TaskEnd, TaskStats) {
        let _ticking = self.ticks.enter();
        run::run_task(&self.pre, task, limits, grants).await
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

fn item_kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) => "func",
        ComponentItem::CoreFunc(_) => "core func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}
