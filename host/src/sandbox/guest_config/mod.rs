//! `[activity.config]`: configuration and secrets for guests, through the standard
//! `wasi:config/store` interface. Plain `values` come from the worker's configuration;
//! `secrets` are references ([`secrets`]) the host resolves with the activity's AWS
//! credentials (its `role_arn` if set): all of them before the activity polls (a secret that
//! cannot be fetched then is an error naming it), again every `refresh` and on each reload
//! (a secret that fails to refresh keeps its last value, and is logged and counted). A
//! value is never logged, never a metric label, never in an error; a key the activity does
//! not grant is `ok(none)`, as the interface says of a missing key.

pub mod secrets;

use crate::config::units::HumanDuration;
use crate::sandbox::capability::{Capability, GrantContext, TaskSetup};
use crate::sandbox::outbound::aws::{AwsGrant, AwsSettings};
use crate::sandbox::store::TaskState;
use crate::sandbox::wasi::parse_key_value;
use anyhow::{bail, Context as _, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use secrets::SecretRef;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, RwLock, Weak};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

/// The configuration capability.
pub struct GuestConfig;

/// How often secrets are fetched again by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5 * 60);
/// The shortest `refresh` allowed.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// `[activity.config]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSettings {
    /// Plain values: key → value.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Secrets by reference: key → `secretsmanager:NAME[#JSON_KEY]` or `ssm:NAME`.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// How often the secrets are fetched again (default 5m).
    pub refresh: Option<HumanDuration>,
}

/// `--config-value KEY=VALUE` and `--secret KEY=REF`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ConfigFlags {
    /// Give the guest a configuration value, read through wasi:config (repeatable)
    #[arg(long = "config-value", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    values: Vec<(String, String)>,
    /// Give the guest a secret the host fetches with this machine's AWS credentials:
    /// KEY=secretsmanager:NAME[#JSON_KEY] or KEY=ssm:NAME (repeatable)
    #[arg(long = "secret", value_name = "KEY=REF", value_parser = parse_secret)]
    secrets: Vec<(String, SecretRef)>,
}

fn parse_secret(text: &str) -> Result<(String, SecretRef), String> {
    let (key, reference) = parse_key_value(text)?;
    Ok((key, reference.parse()?))
}

/// An activity's configuration as its guests read it: the plain values, the secrets'
/// references and the values last fetched, published together for new tasks.
pub struct ConfigStore {
    values: BTreeMap<String, String>,
    secrets: BTreeMap<String, SecretRef>,
    refresh: Duration,
    /// Signs the fetches: the activity's credentials (none without secrets).
    fetcher: Option<AwsGrant>,
    /// What a task starting now reads.
    current: RwLock<Arc<WasiConfigVariables>>,
    /// The secrets' values last fetched: `None` until every one was fetched once.
    fetched: tokio::sync::Mutex<Option<BTreeMap<String, String>>>,
}

impl std::fmt::Debug for ConfigStore {
    /// The keys and references only: never a value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigStore")
            .field("values", &self.values.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets)
            .field("refresh", &self.refresh)
            .finish_non_exhaustive()
    }
}

/// The metric of the secrets' fetches.
#[derive(Default, Clone)]
pub struct ConfigMetrics {
    /// Secret fetches, by activity and result (`ok`, `failed`).
    pub secret_fetches: Family<FetchLabels, Counter>,
}

/// Labels of a secret fetch.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchLabels {
    /// The activity's ARN.
    pub activity: String,
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// What a task of an activity without `[activity.config]` reads: nothing.
static NO_CONFIG: LazyLock<Arc<WasiConfigVariables>> = LazyLock::new(Arc::default);

impl Capability for GuestConfig {
    type Settings = ConfigSettings;
    type Grant = Option<Arc<ConfigStore>>;
    type TaskState = Arc<WasiConfigVariables>;
    type Usage = ();
    type Metrics = ConfigMetrics;
    type Flags = ConfigFlags;

    fn validate(settings: &ConfigSettings) -> Result<()> {
        for key in settings.values.keys().chain(settings.secrets.keys()) {
            if key.is_empty() {
                bail!("a key is empty; name each value, e.g. `api_key = ...`");
            }
        }
        if let Some(key) = settings
            .values
            .keys()
            .find(|key| settings.secrets.contains_key(*key))
        {
            bail!("key {key:?} is in both `values` and `secrets`; keep one");
        }
        if let Some(refresh) = settings.refresh {
            if refresh.0 < MIN_REFRESH {
                bail!("key `refresh`: {refresh} is too often; at least 1s (default 5m)");
            }
            if settings.secrets.is_empty() {
                bail!("key `refresh` is for `secrets`, and the table has none");
            }
        }
        Ok(())
    }

    fn grant(settings: &ConfigSettings, context: &GrantContext<'_>) -> Self::Grant {
        if settings.values.is_empty() && settings.secrets.is_empty() {
            return None;
        }
        let fetcher = (!settings.secrets.is_empty())
            .then(|| AwsGrant::new(&AwsSettings::default(), context, None));
        let store = ConfigStore {
            values: settings.values.clone(),
            secrets: settings.secrets.clone(),
            refresh: settings.refresh.map_or(DEFAULT_REFRESH, |every| every.0),
            fetcher,
            current: RwLock::default(),
            fetched: tokio::sync::Mutex::new(None),
        };
        store.publish(&BTreeMap::new());
        Some(Arc::new(store))
    }

    fn task_state(grant: &Self::Grant, _: &TaskSetup<'_>) -> Result<Arc<WasiConfigVariables>> {
        Ok(match grant {
            Some(store) => store.current.read().unwrap().clone(),
            None => NO_CONFIG.clone(),
        })
    }

    fn link(linker: &mut Linker<TaskState>) -> Result<()> {
        wasmtime_wasi_config::add_to_linker(linker, |state: &mut TaskState| {
            WasiConfig::from(&*state.capabilities_and_table().0.config)
        })
        .map_err(anyhow::Error::from)
        .context("linking wasi:config/store")
    }

    fn apply_flags(flags: ConfigFlags, settings: &mut ConfigSettings) {
        settings.values.extend(flags.values);
        settings.secrets.extend(flags.secrets);
    }

    fn ready(
        grant: &Self::Grant,
        activity: &Arc<str>,
        metrics: &ConfigMetrics,
    ) -> impl std::future::Future<Output = Result<()>> + Send {
        let (grant, activity, metrics) = (grant.clone(), activity.clone(), metrics.clone());
        async move {
            match grant {
                Some(store) => store.ready(&activity, &metrics).await,
                None => Ok(()),
            }
        }
    }

    fn register_metrics(metrics: &ConfigMetrics, registry: &mut Registry) {
        registry.register(
            "config_secret_fetches",
            "Fetches of [activity.config] secrets by result (a failed refresh keeps the last value)",
            metrics.secret_fetches.clone(),
        );
    }

    fn provider(import: &str) -> Option<&'static str> {
        import
            .starts_with("wasi:config/")
            .then_some("sfn-wasm-worker (the activity's [activity.config] values and secrets)")
    }
}

impl ConfigStore {
    /// Fetches every secret: the first time, each must be fetched (the error names the
    /// reference and AWS's answer) and a refresh loop starts; later (a reload that keeps
    /// the activity), it is a refresh.
    async fn ready(self: &Arc<Self>, activity: &Arc<str>, metrics: &ConfigMetrics) -> Result<()> {
        let mut fetched = self.fetched.lock().await;
        if fetched.is_some() {
            drop(fetched);
            self.refresh(activity, metrics).await;
            return Ok(());
        }
        let mut values = BTreeMap::new();
        for (key, reference) in &self.secrets {
            let value = self
                .fetch(reference, activity, metrics)
                .await
                .map_err(|why| {
                    anyhow::anyhow!(
                        "secret `{key}` = {reference:?} could not be fetched: {why} (the worker \
                     needs {} on it, with the activity's credentials)",
                        reference.iam_action()
                    )
                })?;
            values.insert(key.clone(), value);
        }
        self.publish(&values);
        *fetched = Some(values);
        if !self.secrets.is_empty() {
            tokio::spawn(refresh_loop(
                Arc::downgrade(self),
                activity.clone(),
                metrics.clone(),
            ));
        }
        Ok(())
    }

    /// Fetches every secret again; one that fails keeps its last value (logged, counted).
    async fn refresh(&self, activity: &Arc<str>, metrics: &ConfigMetrics) {
        let mut fetched = self.fetched.lock().await;
        let Some(values) = fetched.as_mut() else {
            return;
        };
        for (key, reference) in &self.secrets {
            match self.fetch(reference, activity, metrics).await {
                Ok(value) => {
                    values.insert(key.clone(), value);
                }
                Err(why) => tracing::warn!(
                    activity = %activity,
                    key,
                    reference = %reference,
                    "a secret could not be refreshed; tasks keep its last value: {why}"
                ),
            }
        }
        self.publish(values);
    }

    /// One secret's value, the fetch counted.
    async fn fetch(
        &self,
        reference: &SecretRef,
        activity: &Arc<str>,
        metrics: &ConfigMetrics,
    ) -> Result<String, String> {
        let fetcher = self
            .fetcher
            .as_ref()
            .expect("a store with secrets has a fetcher");
        let value = reference.fetch(fetcher, activity).await;
        let result = if value.is_ok() { "ok" } else { "failed" };
        metrics
            .secret_fetches
            .get_or_create(&FetchLabels {
                activity: activity.to_string(),
                result,
            })
            .inc();
        value
    }

    /// Makes the values and `secret_values` what tasks starting from now read.
    fn publish(&self, secret_values: &BTreeMap<String, String>) {
        let variables: WasiConfigVariables = self
            .values
            .iter()
            .chain(secret_values)
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        *self.current.write().unwrap() = Arc::new(variables);
    }
}

/// Refreshes the store's secrets every `refresh` while the store is in use.
async fn refresh_loop(store: Weak<ConfigStore>, activity: Arc<str>, metrics: ConfigMetrics) {
    loop {
        let Some(every) = store.upgrade().map(|store| store.refresh) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        store.refresh(&activity, &metrics).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_shows_keys_and_references_never_values() {
        let settings = ConfigSettings {
            values: [("region".to_string(), "eu-plain-value".to_string())].into(),
            secrets: [(
                "api_key".to_string(),
                "secretsmanager:prod/api".parse().unwrap(),
            )]
            .into(),
            refresh: None,
        };
        let store = GuestConfig::grant(&settings, &GrantContext::default()).unwrap();
        store.publish(&[("api_key".to_string(), "sk-live-hunter2".to_string())].into());
        let shown = format!("{store:?}");
        assert!(
            shown.contains("region") && shown.contains("secretsmanager:prod/api"),
            "{shown}"
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("eu-plain-value"),
            "{shown}"
        );
    }
}
