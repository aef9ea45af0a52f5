//! What a guest may reach beyond pure computation, one capability per room: each declares
//! its `[activity.NAME]` configuration table, how that table is checked, what one activity
//! is granted from it (built once per activity, shared by its tasks), what it links into
//! the engine's linker, the state it keeps in each task's store, what one task used of it
//! and the metrics that count that, its command-line flags (`invoke`, and `run` with
//! `--activity-arn`), and which imports it provides (`check`'s report).
//!
//! The registry at the bottom is the one list of capabilities: adding one is a module that
//! implements [`Capability`], its WIT if any, one line there, and its README section. Its
//! host functions reach their state through
//! [`TaskState::capabilities_and_table`](crate::sandbox::store::TaskState::capabilities_and_table)
//! (`.0.NAME`), and wasmtime's view traits for its interfaces are implemented in its module.
//! Nothing is granted by default (and the CPU is not bounded); sockets are off.

use crate::sandbox::output_capture::TailCapture;
use crate::sandbox::run::Task;
use crate::sandbox::store::TaskState;
use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Linker;

/// One capability a guest may be granted, configured per activity in `[activity.NAME]`.
pub trait Capability {
    /// The `[activity.NAME]` table's settings, every key optional.
    type Settings: DeserializeOwned + Default + Clone + PartialEq + std::fmt::Debug;
    /// What one activity's guests are granted, built once per activity from its settings.
    type Grant: Clone + Default + std::fmt::Debug + Send + Sync;
    /// What it keeps in one task's store, made fresh for every task.
    type TaskState: Send;
    /// What one task used of it: taken from the task's state before its store is dropped,
    /// read after (so what the store's drop records is in it). `()` if nothing.
    type Usage: Clone + Default + std::fmt::Debug + Send + Sync;
    /// Its metrics, one set per worker. `()` if none.
    type Metrics: Default + Send + Sync;
    /// Its command-line flags, the short form of its settings. [`NoFlags`] if none.
    type Flags: clap::Args + Clone + Default + PartialEq + std::fmt::Debug;

    /// Checks the settings beyond their types; the error names the key and the fix.
    fn validate(_settings: &Self::Settings) -> Result<()> {
        Ok(())
    }

    /// The grant of an activity with these settings, in `context` (its worker and role).
    fn grant(settings: &Self::Settings, context: &GrantContext<'_>) -> Self::Grant;

    /// Its state in the store of one task of an activity granted `grant`.
    fn task_state(grant: &Self::Grant, task: &TaskSetup<'_>) -> Result<Self::TaskState>;

    /// Adds the host functions this capability provides to the engine's linker.
    fn link(_linker: &mut Linker<TaskState>) -> Result<()> {
        Ok(())
    }

    /// Readies an activity's grant before the activity polls: at start-up, and on every
    /// reload that keeps or replaces it (e.g. fetches what it serves). The error names what
    /// failed and the fix.
    fn ready(
        _grant: &Self::Grant,
        _activity: &Arc<str>,
        _metrics: &Self::Metrics,
    ) -> impl std::future::Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Writes the flags given on the command line into `settings`.
    fn apply_flags(_flags: Self::Flags, _settings: &mut Self::Settings) {}

    /// What the task whose state this is used of the capability.
    fn usage(_state: &Self::TaskState) -> Self::Usage {
        Self::Usage::default()
    }

    /// Registers its metrics with the worker's registry.
    fn register_metrics(_metrics: &Self::Metrics, _registry: &mut Registry) {}

    /// Counts what one finished task of `activity` used.
    fn record(_metrics: &Self::Metrics, _activity: &str, _usage: &Self::Usage) {}

    /// Who provides `import`, if this capability does (what `check` prints).
    fn provider(_import: &str) -> Option<&'static str> {
        None
    }
}

/// What a grant is made in besides its own settings: the worker's AWS defaults and the
/// activity's role.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrantContext<'a> {
    /// The worker's `[worker] region`, if set.
    pub worker_region: Option<&'a str>,
    /// The worker's `[worker] endpoint_url`, if set.
    pub worker_endpoint_url: Option<&'a str>,
    /// The activity's `role_arn`, if set.
    pub role_arn: Option<&'a str>,
    /// The activity's `external_id`, if set.
    pub external_id: Option<&'a str>,
}

/// What a capability's per-task state is made from.
pub struct TaskSetup<'a> {
    /// Every grant of the activity (a capability may build on another's, as outbound HTTP
    /// does on `[activity.aws]`).
    pub grants: &'a Grants,
    /// The task.
    pub task: &'a Task,
    /// Where the guest's stdout goes.
    pub stdout: &'a TailCapture,
    /// Where the guest's stderr goes.
    pub stderr: &'a TailCapture,
    /// When the guest must stop.
    pub deadline: Instant,
}

/// The flags of a capability that has none.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
#[group(skip)]
pub struct NoFlags {}

/// Flat keys of earlier versions and the table each moved to: (old key, table, new key).
const MOVED_KEYS: [(&str, &str, &str); 10] = [
    ("env", "wasi", "env"),
    ("read_only_dirs", "wasi", "read_only_dirs"),
    ("allowed_outbound_hosts", "outbound", "allowed_hosts"),
    ("outbound_connect_timeout", "outbound", "connect_timeout"),
    (
        "outbound_first_byte_timeout",
        "outbound",
        "first_byte_timeout",
    ),
    ("outbound_request_timeout", "outbound", "request_timeout"),
    ("max_response_bytes", "outbound", "max_response_bytes"),
    (
        "max_outbound_requests_per_task",
        "outbound",
        "max_requests_per_task",
    ),
    ("max_outbound_in_flight", "outbound", "max_in_flight"),
    ("max_cores", "cpu", "max_cores"),
];

/// Defines the registry: the settings of every capability (one field, one table each), the
/// grants (one field each), and the steps that go through all of them.
macro_rules! capabilities {
    ($($(#[$doc:meta])* $name:ident: $capability:ty,)*) => {
        /// Every capability's settings: the activity's `[activity.NAME]` tables.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct CapabilitySettings {
            $($(#[$doc])* pub $name: <$capability as Capability>::Settings,)*
        }

        /// What an activity grants its guests, one field per capability. Nothing by default.
        #[derive(Debug, Clone, Default)]
        pub struct Grants {
            $($(#[$doc])* pub $name: <$capability as Capability>::Grant,)*
        }

        /// Every capability's state in one task's store.
        pub struct TaskCapabilities {
            $($(#[$doc])* pub $name: <$capability as Capability>::TaskState,)*
        }

        /// What one task used of each capability.
        #[derive(Debug, Clone, Default)]
        pub struct TaskUsage {
            $($(#[$doc])* pub $name: <$capability as Capability>::Usage,)*
        }

        /// Every capability's command-line flags.
        #[derive(clap::Args, Debug, Clone, Default, PartialEq)]
        #[group(skip)]
        pub struct CapabilityFlags {
            $(#[command(flatten)] $name: <$capability as Capability>::Flags,)*
        }

        impl CapabilityFlags {
            /// Whether no capability flag was given.
            pub fn is_empty(&self) -> bool {
                *self == CapabilityFlags::default()
            }

            /// Writes the flags given into `settings`.
            pub fn apply(self, settings: &mut CapabilitySettings) {
                $(<$capability as Capability>::apply_flags(self.$name, &mut settings.$name);)*
            }
        }

        /// Every capability's metrics.
        #[derive(Default)]
        pub struct CapabilityMetrics {
            $($(#[$doc])* pub $name: <$capability as Capability>::Metrics,)*
        }

        impl TaskCapabilities {
            /// What the task has used of each capability so far.
            pub fn usage(&self) -> TaskUsage {
                TaskUsage {
                    $($name: <$capability as Capability>::usage(&self.$name),)*
                }
            }
        }

        impl CapabilityMetrics {
            /// Registers every capability's metrics with `registry`.
            pub fn register(&self, registry: &mut Registry) {
                $(<$capability as Capability>::register_metrics(&self.$name, registry);)*
            }

            /// Counts what one finished task of `activity` used.
            pub fn record(&self, activity: &str, usage: &TaskUsage) {
                $(<$capability as Capability>::record(&self.$name, activity, &usage.$name);)*
            }
        }

        impl Grants {
            /// Each capability's fresh state for one task; fails if one cannot be set up
            /// (e.g. a granted directory vanished).
            pub fn task_states(&self, task: &TaskSetup<'_>) -> Result<TaskCapabilities> {
                Ok(TaskCapabilities {
                    $($name: <$capability as Capability>::task_state(&self.$name, task)
                        .with_context(|| format!("setting up the {} capability", stringify!($name)))?,)*
                })
            }
        }

        impl Grants {
            /// Readies every grant of `activity` before it polls (see [`Capability::ready`]).
            pub async fn ready(&self, activity: &Arc<str>, metrics: &CapabilityMetrics) -> Result<()> {
                $(<$capability as Capability>::ready(&self.$name, activity, &metrics.$name)
                    .await
                    .with_context(|| format!("[activity.{}]", stringify!($name)))?;)*
                Ok(())
            }
        }

        /// The capabilities' table names, in registry order.
        pub const SECTIONS: &[&str] = &[$(stringify!($name)),*];

        impl CapabilitySettings {
            /// Reads the tables from the keys of an activity that are not its own: each
            /// must name a capability's table; a flat key of an earlier version is refused
            /// naming its new place.
            fn from_tables(tables: BTreeMap<String, toml::Value>) -> Result<CapabilitySettings, String> {
                let mut settings = CapabilitySettings::default();
                for (key, value) in tables {
                    match key.as_str() {
                        $(stringify!($name) => {
                            settings.$name = value
                                .try_into()
                                .map_err(|err| format!("[activity.{key}]: {}", err.to_string().trim_end()))?;
                        })*
                        _ => return Err(unknown_key(&key)),
                    }
                }
                Ok(settings)
            }

            /// Checks every table; the error names the table and the key.
            pub fn validate(&self) -> Result<()> {
                $(<$capability as Capability>::validate(&self.$name)
                    .with_context(|| format!("[activity.{}]", stringify!($name)))?;)*
                self.validate_together()
            }

            /// The grants of an activity with these settings. Each call makes new grants
            /// (an outbound grant holds the activity's in-flight bound): build them once
            /// per activity.
            pub fn grants(&self, context: &GrantContext<'_>) -> Grants {
                Grants {
                    $($name: <$capability as Capability>::grant(&self.$name, context),)*
                }
            }
        }

        /// Links every capability's host functions.
        pub fn link_all(linker: &mut Linker<TaskState>) -> Result<()> {
            $(<$capability as Capability>::link(linker)
                .with_context(|| format!("linking the {} capability", stringify!($name)))?;)*
            Ok(())
        }

        /// Who provides `import`: a capability, plain WASI p2, or nobody.
        pub fn provider_of(import: &str) -> &'static str {
            $(if let Some(provider) = <$capability as Capability>::provider(import) {
                return provider;
            })*
            if import.starts_with("wasi:") {
                "WASI p2"
            } else {
                "NOT PROVIDED by this host"
            }
        }
    };
}

capabilities! {
    /// `[activity.wasi]`: environment variables and read-only directories.
    wasi: crate::sandbox::wasi::Wasi,
    /// `[activity.outbound]`: outbound HTTP to listed origins, within limits.
    outbound: crate::sandbox::outbound::Outbound,
    /// `[activity.aws]`: AWS services the guest calls, its requests signed by the host.
    aws: crate::sandbox::outbound::aws::Aws,
    /// `[activity.large_output]`: outputs over 256 KiB written to S3, a pointer returned.
    large_output: crate::sandbox::large_output::LargeOutput,
    /// `[activity.config]`: values and secrets the guest reads through `wasi:config/store`.
    config: crate::sandbox::guest_config::GuestConfig,
    /// `[activity.host]`: the `sfn:activity/host` interface (log, heartbeat).
    host: crate::sandbox::host_api::HostApi,
    /// `[activity.cpu]`: the activity's share of the CPU.
    cpu: crate::sandbox::cpu_share::Cpu,
}

impl CapabilitySettings {
    /// Checks what one table needs of another.
    fn validate_together(&self) -> Result<()> {
        if self.large_output.bucket.is_some() && !self.aws.services.iter().any(|s| s == "s3") {
            anyhow::bail!(
                "[activity.large_output] writes to S3 with the guests' AWS credentials: add \"s3\" \
                 to [activity.aws] services"
            );
        }
        Ok(())
    }
}

/// Why `key` is not an activity key: moved to a table, or unknown.
fn unknown_key(key: &str) -> String {
    match MOVED_KEYS.iter().find(|(old, _, _)| *old == key) {
        Some((_, table, new)) => format!(
            "key `{key}` has moved: write it as `{new}` in the activity's table \
             [activity.{table}] (e.g. `[[activity]] ... [activity.{table}] {new} = ...`)"
        ),
        None => format!(
            "unknown key `{key}`: an activity has the keys arn, component, max_concurrency, \
             pollers, timeout, memory_limit, heartbeat_interval, role_arn and external_id, \
             and the tables {}",
            SECTIONS
                .iter()
                .map(|table| format!("[activity.{table}]"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl<'de> Deserialize<'de> for CapabilitySettings {
    /// From the keys of an activity table that are not the activity's own (flattened).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let tables = BTreeMap::<String, toml::Value>::deserialize(deserializer)?;
        CapabilitySettings::from_tables(tables).map_err(serde::de::Error::custom)
    }
}
