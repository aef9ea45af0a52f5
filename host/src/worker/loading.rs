//! Loading what activities run with, at start-up and on reload: each component compiled,
//! checked and stamped, and a reload's whole new state prepared (reusing what did not
//! change) and checked against what the running engine reserved.

use crate::config::{ActivityConfig, ValidConfig};
use crate::sandbox::{Grants, Guest, Runtime};
use crate::worker::activity::ActivitySpec;
use crate::worker::file_stamp::FileStamp;
use crate::worker::metrics::{activity_label, Metrics};
use crate::worker::sfn::ActivityClients;
use anyhow::{bail, Context as _, Result};
use std::sync::Arc;
use std::time::Instant;

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

/// The state that serves `config` (a new configuration, or the running one when only
/// components changed), or `None` when it is the running one. Reuses what did not change
/// (a component whose file is as it was, clients whose role is the same). A new
/// configuration must fit what the running engine reserved. Every activity's grants are
/// readied (new secrets fetched, kept ones refreshed) before it is swapped in.
pub(crate) async fn prepare(
    runtime: &Arc<Runtime>,
    clients: &ActivityClients,
    served: &Served,
    config: Option<ValidConfig>,
    metrics: &Metrics,
) -> Result<Option<Served>> {
    let config = match config {
        None => served.config.clone(),
        Some(config) => {
            fits_the_running_engine(&config, &served.config, runtime)?;
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
        let mut grants = activity.grants(&config.worker);
        if let Some(old) = old {
            // The same secrets, fetched with the same role: keep the store (its last values,
            // its refresh loop), so the reload refreshes them rather than fetching anew.
            if old.config.capabilities.config == activity.capabilities.config
                && old.config.role_arn == activity.role_arn
                && old.config.external_id == activity.external_id
            {
                grants.config = old.grants.config.clone();
            }
        }
        let loaded = match unchanged_component {
            Some(loaded) => loaded,
            None => {
                let loaded = load_component(runtime, activity, &grants, metrics).await?;
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
            _ => clients.for_activity(activity).await,
        };
        specs.push(Arc::new(ActivitySpec::for_guest(
            activity.clone(),
            client,
            loaded,
            grants,
        )));
    }
    for spec in &specs {
        spec.ready(metrics).await?;
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
