//! The process's [`Runtime`]: one engine, one linker holding every capability's host
//! functions, the epoch ticker and the loaded components; it loads a component, checks it
//! against the world and pre-instantiates it into a [`Guest`], and reports on it for `check`.

use crate::sandbox::artefacts::Artefacts;
use crate::sandbox::bindings::HandlerPre;
use crate::sandbox::capability::{self, Grants};
use crate::sandbox::component::{Guest, WORLD};
use crate::sandbox::engine::{build_engine, EngineSettings, EpochTicker};
use crate::sandbox::limits::{TaskLimits, READY_SANDBOXES};
use crate::sandbox::store::TaskState;
use anyhow::{Context as _, Result};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

/// The activity name a start-up check outside any activity runs under (`check`, `compile`).
const CHECK_ACTIVITY: &str = "sfn-wasm-worker-check";

/// The engine, the linker holding every host function, and the epoch ticker.
pub struct Runtime {
    engine: Engine,
    settings: EngineSettings,
    artefacts: Artefacts,
    linker: Linker<TaskState>,
    ticker: EpochTicker,
    /// The engine's sandboxes for ready instances, beside the task slots.
    ready_sandboxes: Arc<Semaphore>,
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
            ready_sandboxes: Arc::new(Semaphore::new(READY_SANDBOXES as usize)),
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
        let guest = self.pre_instantiate(path, &component)?;
        Ok(guest.with_artefact(artefact))
    }

    /// Forgets every loaded component but those of `in_use` (after a reload replaced some):
    /// a replaced one is freed when its last task ends, and loaded again if it comes back.
    pub fn keep_loaded<'a>(&self, in_use: impl IntoIterator<Item = &'a Guest>) {
        let keys: std::collections::HashSet<&str> =
            in_use.into_iter().filter_map(Guest::artefact).collect();
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
        Ok(Guest::new(
            path,
            pre,
            self.ticker.clone(),
            self.ready_sandboxes.clone(),
        ))
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
