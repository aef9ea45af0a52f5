//! Hot reload. SIGHUP reads the configuration again; a change to an activity's component
//! file (watched, debounced) loads that component again. Either way the new state is
//! prepared in full first (configuration validated, components compiled and checked
//! against the world, clients built) and then handed to the worker as a whole, which swaps
//! it in atomically: a task keeps the component and settings it started with, later tasks
//! get the new ones; added activities start polling, removed ones stop and drain. Anything
//! that fails, or cannot apply without a restart (a `[worker]` change, more task slots or
//! memory than the engine reserved), refuses the whole reload with a log line naming the
//! reason, and the running state keeps serving. This module watches and triggers; the
//! loading itself is [`crate::worker::loading`]'s, as at start-up.

use crate::config::Config;
use crate::registry::ComponentRegistry;
use crate::sandbox::Runtime;
use crate::worker::activity::ActivitySpec;
use crate::worker::loading::{prepare, Served};
use crate::worker::metrics::Metrics;
use crate::worker::sfn::ActivityClients;
use anyhow::{Context as _, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a burst of file events must go quiet before the reload starts: a component
/// being copied into place fires many.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// What a reload needs besides the running state: where the configuration comes from, the
/// engine to load components with, and how to build an activity's Step Functions clients.
pub struct ReloadSource {
    /// The engine the worker's components were loaded with (its pool bounds a reload).
    pub runtime: Arc<Runtime>,
    /// Reads the configuration again, as at start-up (the file, and the flags over it).
    pub read_config: Box<dyn Fn() -> Result<Config> + Send + Sync>,
    /// Pulls the configuration's `oci://` components (a pull that fails refuses the reload).
    pub registry: Arc<ComponentRegistry>,
    /// Builds the clients of an added activity, or of one whose role changed.
    pub clients: ActivityClients,
}

/// Why a reload was asked for; the larger reason wins when several arrive together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ReloadReason {
    /// A component file changed: load changed components, keep the running configuration.
    Components,
    /// SIGHUP: read the configuration again, and load changed components.
    Config,
}

/// Asks the worker to reload. Cheap to clone; requests made before the worker runs wait.
#[derive(Clone)]
pub struct ReloadTrigger(mpsc::UnboundedSender<ReloadReason>);

impl ReloadTrigger {
    pub(crate) fn new() -> (ReloadTrigger, mpsc::UnboundedReceiver<ReloadReason>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (ReloadTrigger(sender), receiver)
    }

    /// Reads the configuration again and applies it (what SIGHUP does).
    pub fn config(&self) {
        let _ = self.0.send(ReloadReason::Config);
    }

    /// Loads again the components whose files changed, with the running configuration.
    pub fn components(&self) {
        let _ = self.0.send(ReloadReason::Components);
    }
}

/// Reloads the configuration on every SIGHUP.
pub async fn reload_on_sighup(trigger: ReloadTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration and components");
        trigger.config();
    }
    Ok(())
}

/// Serves reload requests until `stop`: debounces them, prepares the new state and sends
/// it on `apply` (the worker counts it applied once it has swapped it in). Watches the component files while the configuration asks for it.
pub(crate) async fn reload_loop(
    source: ReloadSource,
    trigger: ReloadTrigger,
    mut requests: mpsc::UnboundedReceiver<ReloadReason>,
    mut served: Served,
    apply: mpsc::UnboundedSender<Vec<Arc<ActivitySpec>>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // Kept alive while it watches; replaced when a reload changes the files.
    let mut _watcher = ComponentWatcher::start(&served.config, &trigger);
    loop {
        let mut reason = tokio::select! {
            request = requests.recv() => match request {
                Some(reason) => reason,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(next) => reason = reason.max(next),
                    None => return,
                },
                _ = tokio::time::sleep(DEBOUNCE) => break,
                _ = stop.cancelled() => return,
            }
        }
        let prepared = match reason {
            ReloadReason::Components => Ok(None),
            ReloadReason::Config => match (source.read_config)() {
                Ok(mut config) => match source.registry.pull_all(&mut config).await {
                    Ok(()) => config.validate().map(Some),
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            },
        };
        let prepared = match prepared {
            Ok(config) => {
                prepare(&source.runtime, &source.clients, &served, config, &metrics).await
            }
            Err(err) => Err(err),
        };
        match prepared {
            Ok(None) => tracing::debug!(?reason, "reload: nothing changed"),
            Ok(Some(next)) => {
                if apply.send(next.specs.clone()).is_err() {
                    return; // the worker has stopped
                }
                source.runtime.keep_loaded(
                    next.specs
                        .iter()
                        .filter_map(|spec| spec.loaded.as_ref().map(|(guest, _)| guest)),
                );
                served = next;
                _watcher = ComponentWatcher::start(&served.config, &trigger);
            }
            Err(err) => {
                Metrics::count(&metrics.reloads, "refused");
                tracing::error!(
                    error = %format!("{err:#}"),
                    "reload refused; the running configuration and components keep serving"
                );
            }
        }
    }
}

/// Watches the directories of the activities' component files and asks for a reload of the
/// components when one of those files is written, created, renamed or removed. Stops when
/// dropped.
struct ComponentWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl ComponentWatcher {
    /// Watches `config`'s components if it asks for it; logs (and serves on) when the
    /// directories cannot be watched.
    fn start(config: &Config, trigger: &ReloadTrigger) -> Option<ComponentWatcher> {
        if !config.watch_components() {
            return None;
        }
        let files: HashSet<PathBuf> = config
            .activities
            .iter()
            .filter_map(|activity| std::path::absolute(&activity.component).ok())
            .collect();
        match Self::watch(files, trigger.clone()) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(
                    error = %format!("{err:#}"),
                    "cannot watch the component files; reload them with SIGHUP"
                );
                None
            }
        }
    }

    fn watch(files: HashSet<PathBuf>, trigger: ReloadTrigger) -> Result<ComponentWatcher> {
        use notify::{EventKind, RecursiveMode, Watcher as _};
        let directories: HashSet<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_path_buf))
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                let written = match event.kind {
                    EventKind::Create(_) | EventKind::Remove(_) => true,
                    EventKind::Modify(notify::event::ModifyKind::Metadata(_)) => false,
                    EventKind::Modify(_) => true,
                    EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Write,
                    )) => true,
                    _ => false,
                };
                if written && event.paths.iter().any(|path| files.contains(path)) {
                    trigger.components();
                }
            })
            .context("starting the file watcher")?;
        for directory in &directories {
            watcher
                .watch(directory, RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", directory.display()))?;
        }
        Ok(ComponentWatcher { _watcher: watcher })
    }
}
