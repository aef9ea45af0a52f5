//! Hot reload. SIGHUP reads the configuration again; a change to an activity's component
//! file (watched, debounced) loads that component again. Either way the new state is
//! prepared in full first (configuration validated, components compiled and checked
//! against the world, clients built) and then handed to the worker as a whole, which swaps
//! it in atomically: a task keeps the component and settings it started with, later tasks
//! get the new ones; added activities start polling, removed ones stop and drain. Anything
//! that fails, or cannot apply without a restart (a `[worker]` change, more task slots or
//! memory than the engine reserved), refuses the whole reload with a log line naming the
//! reason, and the running state keeps serving.

use crate::config::{ActivityConfig, Config, ValidConfig};
use crate::sandbox::{Grants, Guest, Runtime};
use crate::worker::activity::ActivitySpec;
use crate::worker::metrics::{activity_label, Metrics};
use crate::worker::sfn::ActivityClients;
use anyhow::{bail, Context as _, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
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

/// A component file's identity when it was loaded: a file replaced or rewritten since
/// differs in one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub(crate) fn of(path: &Path) -> Result<FileStamp> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(path)
            .with_context(|| format!("reading component {}", path.display()))?;
        Ok(FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
        })
    }
}

/// Loads `activity`'s component with `runtime`, tries its start-up under the activity's
/// limits and `grants` (the very grants its tasks will run with), and stamps its file;
/// returns both and the seconds it took. The error names the activity and its `component`
/// key.
pub(crate) fn load_stamped(
    runtime: &Runtime,
    activity: &ActivityConfig,
    grants: &Grants,
) -> Result<(Guest, FileStamp, f64)> {
    let loading = Instant::now();
    let path = &activity.component;
    let (guest, stamp) = FileStamp::of(path)
        .and_then(|stamp| {
            let guest = runtime.load(path)?;
            guest.check_start_up(&activity.arn, &activity.limits(), grants)?;
            Ok((guest, stamp))
        })
        .with_context(|| format!("activity {}: key `component`", activity.arn))?;
    Ok((guest, stamp, loading.elapsed().as_secs_f64()))
}

/// [`load_stamped`] off the async threads (a large guest takes seconds to compile), with
/// the time it took recorded.
pub(crate) async fn load_component(
    runtime: &Arc<Runtime>,
    activity: &ActivityConfig,
    grants: &Grants,
    metrics: &Metrics,
) -> Result<(Guest, FileStamp)> {
    let (runtime, config, grants) = (runtime.clone(), activity.clone(), grants.clone());
    let (guest, stamp, seconds) =
        tokio::task::spawn_blocking(move || load_stamped(&runtime, &config, &grants))
            .await
            .context("the component loading thread panicked")??;
    metrics
        .component_load_seconds
        .get_or_create(&activity_label(&activity.arn))
        .set(seconds);
    Ok((guest, stamp))
}

/// The state a reload starts from and produces: the configuration and each activity's spec,
/// in the configuration's order.
pub(crate) struct Served {
    pub(crate) config: ValidConfig,
    pub(crate) specs: Vec<Arc<ActivitySpec>>,
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
        match prepare(&source, &served, reason, &metrics).await {
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

/// The state `reason` asks for, or `None` when it is the running one. Reuses what did not
/// change (a component whose file is as it was, clients whose role is the same).
async fn prepare(
    source: &ReloadSource,
    served: &Served,
    reason: ReloadReason,
    metrics: &Metrics,
) -> Result<Option<Served>> {
    let config = match reason {
        ReloadReason::Components => served.config.clone(),
        ReloadReason::Config => {
            let config = (source.read_config)()?.validate()?;
            fits_the_running_engine(&config, &served.config, &source.runtime)?;
            config
        }
    };
    let mut specs = Vec::with_capacity(config.activities.len());
    for activity in &config.activities {
        let old = served
            .specs
            .iter()
            .find(|spec| spec.config.arn == activity.arn);
        let unchanged_component = match old.and_then(|old| Some((old, old.loaded.as_ref()?))) {
            Some((old, (guest, stamp)))
                if old.config.component == activity.component
                    && FileStamp::of(&activity.component).ok() == Some(*stamp) =>
            {
                Some((guest.clone(), *stamp))
            }
            _ => None,
        };
        if let (Some(old), Some(_)) = (old, &unchanged_component) {
            if old.config == *activity {
                specs.push(old.clone());
                continue;
            }
        }
        let grants = activity.grants();
        let loaded = match unchanged_component {
            Some(loaded) => loaded,
            None => {
                let loaded = load_component(&source.runtime, activity, &grants, metrics).await?;
                tracing::info!(
                    activity = %activity.arn,
                    component = %activity.component.display(),
                    "reload: component loaded; new tasks run it"
                );
                loaded
            }
        };
        let client = match old {
            Some(old)
                if old.config.role_arn == activity.role_arn
                    && old.config.external_id == activity.external_id =>
            {
                old.client.clone()
            }
            _ => source.clients.for_activity(activity).await,
        };
        specs.push(Arc::new(ActivitySpec::new(
            activity.clone(),
            client,
            Arc::new(loaded.0.clone()),
            Some(loaded),
            grants,
        )));
    }
    let unchanged = specs.len() == served.specs.len()
        && specs
            .iter()
            .zip(&served.specs)
            .all(|(new, old)| Arc::ptr_eq(new, old));
    Ok((!unchanged).then_some(Served { config, specs }))
}

/// Refuses a configuration that the running engine or process cannot serve without a
/// restart, saying why.
fn fits_the_running_engine(
    config: &ValidConfig,
    running: &ValidConfig,
    runtime: &Runtime,
) -> Result<()> {
    if config.worker != running.worker {
        bail!(
            "the [worker] section changed; it applies on restart (put it back to reload the rest)"
        );
    }
    let engine = runtime.settings();
    if config.total_concurrency() > engine.max_concurrent_tasks {
        bail!(
            "the activities' max_concurrency adds up to {} but the engine reserved {} task \
             slots at start-up: restart to apply, or set [worker] pool_tasks higher next time \
             to leave room",
            config.total_concurrency(),
            engine.max_concurrent_tasks
        );
    }
    if config.max_memory_limit() > engine.max_memory_bytes {
        bail!(
            "a memory_limit of {} is more than the {} per task the engine reserved at start-up: \
             restart to apply, or set [worker] pool_memory_limit higher next time",
            crate::config::units::ByteSize(config.max_memory_limit()),
            crate::config::units::ByteSize(engine.max_memory_bytes)
        );
    }
    Ok(())
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
