//! The worker's configuration: one TOML file, many activities (each a tenant with its own
//! component, limits and grants), or a single activity given on the command line.
//!
//! Every problem is reported before any poll starts, naming the file, the key and the fix:
//! [`Config::load`] reads and parses, [`Config::validate`] (run once, by
//! [`crate::worker::Worker::new`]) checks what the types cannot. [`units`] parses the
//! human units (`30s`, `128MiB`) used here and on the command line.

pub mod units;

use crate::sandbox::capability::GrantContext;
use crate::sandbox::engine::{CacheSetting, EngineSettings};
use crate::sandbox::limits::READY_SANDBOXES;
use crate::sandbox::{CapabilitySettings, Grants, InstancePolicy, TaskLimits};
use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use units::{ByteSize, HumanDuration};

/// The most long polls AWS allows open per activity ARN.
pub const MAX_POLLERS_PER_ACTIVITY: u32 = 1_000;
/// The most tasks one worker process may hold in flight (its engine's pool is sized for
/// them): BENCHMARKS.md measures 10 000; past this, run more processes.
pub const MAX_TASKS_IN_FLIGHT: u32 = 100_000;
/// Default tasks of one activity that may run at once.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 4;
/// Default long polls kept open per activity.
pub const DEFAULT_POLLERS: u32 = 1;
pub use crate::sandbox::limits::{DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT};
/// Task slots the default pool reserves beyond the activities' `max_concurrency` (at least;
/// see [`Config::pool_tasks`]), so that a reload can add tenants without a restart.
pub const POOL_HEADROOM_TASKS: u32 = 256;
/// The most task slots the default pool reserves when the activities need fewer: 3 000
/// sandboxes of 32.25 GiB each are 94 TiB of the 128 TiB a process can address.
pub const DEFAULT_POOL_TASKS_CAP: u32 = 3_000;
/// The most a 32-bit linear memory can hold.
const WASM32_MEMORY_BYTES: u64 = 4 << 30;
/// Default time shutdown waits for in-flight tasks.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub worker: WorkerSection,
    /// The activities to serve (`[[activity]]` tables).
    #[serde(default, rename = "activity")]
    pub activities: Vec<ActivityConfig>,
}

/// `[worker]`: process-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    /// `workerName` sent on every poll (default: hostname-pid).
    pub name: Option<String>,
    /// AWS region (default: the standard AWS configuration chain).
    pub region: Option<String>,
    /// Step Functions endpoint, e.g. `http://127.0.0.1:4566` for LocalStack
    /// (default: `AWS_ENDPOINT_URL` or the region's endpoint).
    pub endpoint_url: Option<String>,
    /// How long shutdown waits for in-flight tasks before failing them with
    /// `Worker.ShuttingDown` (default 30s).
    pub drain_timeout: Option<HumanDuration>,
    /// Compiled components' directory; relative paths are relative to the config file
    /// (default: ~/.cache/sfn-wasm-worker).
    pub cache_dir: Option<PathBuf>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`, e.g. `0.0.0.0:9090` (default: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Tasks the engine reserves sandboxes for, across every activity (default: room for
    /// twice the sum of their `max_concurrency`, at least 256 more, see
    /// [`Config::pool_tasks`]). Set it to leave more or less room for activities that a
    /// reload adds or grows.
    pub pool_tasks: Option<u32>,
    /// The per-task memory the engine reserves (default: the largest `memory_limit`, at
    /// least 4 GiB). Set it higher to let a reload raise an activity's `memory_limit` past
    /// 4 GiB (several memories).
    pub pool_memory_limit: Option<ByteSize>,
    /// Reload an activity's component when its file changes (default true). SIGHUP reloads
    /// the configuration and the components whatever this says.
    pub watch_components: Option<bool>,
    /// Registries (`host:port`) that `oci://` components are pulled from over plain http
    /// (loopback ones always are; default: none).
    #[serde(default)]
    pub insecure_registries: Vec<String>,
    /// The task journal: a file, or a directory to hold `tasks.journal`, on local disk
    /// (e.g. a Kubernetes emptyDir); relative paths are relative to the config file
    /// (default: none). A restarted worker reports what a killed one left in it
    /// ([`crate::worker::journal`]).
    pub journal: Option<PathBuf>,
    /// Where to export task traces: an OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added); default: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else no traces ([`crate::worker::traces`]).
    pub otlp_endpoint: Option<String>,
}

/// `[[activity]]`: one activity, the component that handles its tasks, and one table per
/// capability it grants ([`crate::sandbox::capability`]). A key that is neither the
/// activity's own nor a capability's table is refused (a moved one naming its table).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ActivityConfig {
    /// The activity's ARN: `arn:aws:states:REGION:ACCOUNT:activity:NAME`.
    pub arn: String,
    /// The guest component: a .wasm file (relative paths are relative to the config file),
    /// or `oci://REGISTRY/REPO@sha256:DIGEST`, pulled ([`crate::registry`]) into a file
    /// before the configuration is validated.
    pub component: PathBuf,
    /// Tasks of this activity that may run at once (default 4).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Long polls kept open at once, each holding a free slot (default 1; at most
    /// `max_concurrency` and 1 000).
    #[serde(default = "default_pollers")]
    pub pollers: u32,
    /// Wall-clock limit per task (default 60s).
    pub timeout: Option<HumanDuration>,
    /// Linear-memory cap per task (default 128MiB).
    pub memory_limit: Option<ByteSize>,
    /// Send SendTaskHeartbeat for every in-flight task at this interval (default: off).
    pub heartbeat_interval: Option<HumanDuration>,
    /// Tasks one instance of the component serves, one after another (default 1: a fresh
    /// instance per task); see [`crate::sandbox::instances`].
    pub instance_reuse: Option<u32>,
    /// How long an instance kept for reuse waits for a task before it is dropped
    /// (default 60s; with `instance_reuse` over 1).
    pub instance_idle_timeout: Option<HumanDuration>,
    /// Fresh instances made ahead of the activity's tasks (default 1; 0 for none).
    pub ready_instances: Option<u32>,
    /// An IAM role to call Step Functions with for this activity (e.g. in a tenant's
    /// account), assumed with the worker's own credentials (default: the worker's own).
    pub role_arn: Option<String>,
    /// The external id the role's trust policy requires (with `role_arn`).
    pub external_id: Option<String>,
    /// The capabilities' tables: `[activity.wasi]`, `[activity.outbound]`, ...
    #[serde(flatten)]
    pub capabilities: CapabilitySettings,
}

fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

fn default_pollers() -> u32 {
    DEFAULT_POLLERS
}

impl ActivityConfig {
    /// A single activity with default settings (the command-line form).
    pub fn new(arn: String, component: PathBuf) -> ActivityConfig {
        ActivityConfig {
            arn,
            component,
            max_concurrency: default_max_concurrency(),
            pollers: default_pollers(),
            timeout: None,
            memory_limit: None,
            heartbeat_interval: None,
            instance_reuse: None,
            instance_idle_timeout: None,
            ready_instances: None,
            role_arn: None,
            external_id: None,
            capabilities: CapabilitySettings::default(),
        }
    }

    /// Whether its `component` is an `oci://` reference not pulled yet.
    pub fn pulls_its_component(&self) -> bool {
        self.component
            .to_str()
            .is_some_and(|text| text.starts_with(crate::registry::reference::SCHEME))
    }

    /// Checks what serde cannot; the error names the key (the caller names the activity).
    fn check(&self) -> Result<()> {
        validate_arn(&self.arn).context("key `arn`")?;
        if self.pulls_its_component() {
            bail!(
                "key `component`: {} is pulled from its registry by `run` before the \
                 configuration is checked (ComponentRegistry::pull_all)",
                self.component.display()
            );
        }
        if self.component.is_dir() {
            bail!(
                "key `component`: {} is a directory; give the component's .wasm file",
                self.component.display()
            );
        }
        if !self.component.is_file() {
            bail!(
                "key `component`: {} does not exist; build the guest (guest/build.sh) or fix the path",
                self.component.display()
            );
        }
        if self.max_concurrency == 0 {
            bail!("key `max_concurrency` must be at least 1");
        }
        if self.pollers == 0 || self.pollers > self.max_concurrency.min(MAX_POLLERS_PER_ACTIVITY) {
            bail!(
                "key `pollers` is {} but must be between 1 and max_concurrency ({}) and at most \
                 {MAX_POLLERS_PER_ACTIVITY}: each open poll holds a free task slot",
                self.pollers,
                self.max_concurrency
            );
        }
        let limits = self.limits();
        if limits.timeout.is_zero() {
            bail!("key `timeout` must be more than 0s");
        }
        if limits.memory_limit < 1 << 20 {
            bail!("key `memory_limit` must be at least 1MiB");
        }
        if let Some(HumanDuration(interval)) = self.heartbeat_interval {
            if interval < Duration::from_secs(1) {
                bail!("key `heartbeat_interval` must be at least 1s");
            }
        }
        self.check_instance_policy()?;
        if let Some(role) = &self.role_arn {
            validate_role_arn(role).context("key `role_arn`")?;
        } else if self.external_id.is_some() {
            bail!("key `external_id` needs `role_arn`: it is sent when assuming that role");
        }
        self.capabilities.validate()
    }

    fn check_instance_policy(&self) -> Result<()> {
        let policy = self.instance_policy();
        if policy.reuse == 0 {
            bail!(
                "key `instance_reuse` must be at least 1 (1 is a fresh instance per task, \
                 N lets one instance serve N tasks one after another)"
            );
        }
        if policy.ready > self.max_concurrency.min(READY_SANDBOXES) {
            bail!(
                "key `ready_instances` is {} but may be at most max_concurrency ({}) and \
                 {READY_SANDBOXES} (the sandboxes reserved for ready instances)",
                policy.ready,
                self.max_concurrency
            );
        }
        if let Some(HumanDuration(idle)) = self.instance_idle_timeout {
            if policy.reuse == 1 {
                bail!(
                    "key `instance_idle_timeout` needs `instance_reuse` over 1: with a fresh \
                     instance per task no instance waits for a task"
                );
            }
            if idle < Duration::from_millis(100) {
                bail!("key `instance_idle_timeout` must be at least 100ms");
            }
        }
        Ok(())
    }

    /// How its tasks get their instances.
    pub fn instance_policy(&self) -> InstancePolicy {
        let defaults = InstancePolicy::default();
        InstancePolicy {
            reuse: self.instance_reuse.unwrap_or(defaults.reuse),
            idle_timeout: self
                .instance_idle_timeout
                .map_or(defaults.idle_timeout, |t| t.0),
            ready: self.ready_instances.unwrap_or(defaults.ready),
        }
    }

    /// The per-task limits.
    pub fn limits(&self) -> TaskLimits {
        let defaults = TaskLimits::default();
        TaskLimits {
            timeout: self.timeout.map_or(defaults.timeout, |t| t.0),
            memory_limit: self.memory_limit.map_or(defaults.memory_limit, |m| m.0),
        }
    }

    /// The capabilities granted to the guest, served by a worker with `worker`'s settings.
    /// Each call makes a new outbound grant (with its own in-flight bound): call it once per
    /// activity and use the result for its start-up check and its tasks alike.
    pub fn grants(&self, worker: &WorkerSection) -> Grants {
        self.capabilities.grants(&GrantContext {
            worker_region: worker.region.as_deref(),
            worker_endpoint_url: worker.endpoint_url.as_deref(),
            role_arn: self.role_arn.as_deref(),
            external_id: self.external_id.as_deref(),
        })
    }
}

/// A configuration that passed [`Config::validate`]: what the engine is sized from and what
/// a [`crate::worker::Worker`] serves. Reads as the [`Config`] it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidConfig(Config);

impl std::ops::Deref for ValidConfig {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.0
    }
}

impl ValidConfig {
    /// The engine this configuration needs: its pool of sandboxes, and compiled components
    /// kept as `cache` says.
    pub fn engine_settings(&self, cache: CacheSetting) -> EngineSettings {
        EngineSettings {
            max_concurrent_tasks: self.pool_tasks(),
            max_memory_bytes: self.pool_memory_limit(),
            cache,
        }
    }
}

impl Config {
    /// Reads and parses the configuration file at `path`, resolving relative paths against
    /// its directory. Call [`Config::validate`] before using it.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|err| {
            anyhow::anyhow!(
                "config file {}: {}",
                path.display(),
                err.to_string().trim_end()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let worker_paths = [&mut config.worker.cache_dir, &mut config.worker.journal];
        for worker_path in worker_paths.into_iter().flatten() {
            if worker_path.is_relative() {
                *worker_path = base.join(&*worker_path);
            }
        }
        for activity in &mut config.activities {
            if activity.component.is_relative() && !activity.pulls_its_component() {
                activity.component = base.join(&activity.component);
            }
        }
        Ok(config)
    }

    /// Checks what serde cannot (at least one activity, well-formed unique ARNs, files that
    /// exist, bounds on concurrency, pollers and the pool) and returns the configuration as
    /// the one type the engine is sized from and a worker serves.
    pub fn validate(self) -> Result<ValidConfig> {
        self.check()?;
        Ok(ValidConfig(self))
    }

    fn check(&self) -> Result<()> {
        if self.activities.is_empty() {
            bail!("no activities: add an [[activity]] table with `arn` and `component`");
        }
        if let Some(HumanDuration(d)) = self.worker.drain_timeout {
            if d.is_zero() {
                bail!("[worker] drain_timeout must be more than 0s");
            }
        }
        self.check_pool()?;
        let mut seen = HashSet::new();
        for (index, activity) in self.activities.iter().enumerate() {
            let at = format!("activity[{index}] ({})", activity.arn);
            // A repeated ARN was checked with its first activity.
            if !seen.insert(activity.arn.as_str()) {
                bail!("{at}: key `arn`: this activity is listed twice; merge the two tables");
            }
            activity.check().with_context(|| at.clone())?;
        }
        Ok(())
    }

    /// The engine's pool holds every activity's tasks and memory, within one process's
    /// bounds.
    fn check_pool(&self) -> Result<()> {
        if self.pool_tasks() > MAX_TASKS_IN_FLIGHT {
            let what = match self.worker.pool_tasks {
                Some(pool_tasks) => format!("[worker] pool_tasks is {pool_tasks}"),
                None => format!(
                    "the activities' max_concurrency adds up to {}",
                    self.activities
                        .iter()
                        .map(|a| u64::from(a.max_concurrency))
                        .sum::<u64>()
                ),
            };
            bail!(
                "{what}, more than the {MAX_TASKS_IN_FLIGHT} tasks one worker process may hold \
                 in flight (its sandbox pool is reserved for all of them up front): lower it and \
                 run more worker processes; Step Functions spreads the tasks across them"
            );
        }
        if self.total_concurrency() > self.pool_tasks() {
            bail!(
                "[worker] pool_tasks is {} but the activities' max_concurrency adds up to {}: \
                 raise pool_tasks or remove it",
                self.pool_tasks(),
                self.total_concurrency()
            );
        }
        if self.max_memory_limit() > self.pool_memory_limit() {
            bail!(
                "[worker] pool_memory_limit is {} but an activity's memory_limit is {}: \
                 raise pool_memory_limit or remove it",
                ByteSize(self.pool_memory_limit()),
                ByteSize(self.max_memory_limit())
            );
        }
        Ok(())
    }

    /// Tasks that may run at once across every activity (at most `u32::MAX`).
    pub fn total_concurrency(&self) -> u32 {
        self.activities
            .iter()
            .fold(0, |total: u32, a| total.saturating_add(a.max_concurrency))
    }

    /// The largest per-task memory cap.
    pub fn max_memory_limit(&self) -> u64 {
        self.activities
            .iter()
            .map(|a| a.limits().memory_limit)
            .max()
            .unwrap_or(DEFAULT_MEMORY_LIMIT)
    }

    /// Tasks the engine's pool is sized for: `[worker] pool_tasks`, or by default the
    /// activities' `max_concurrency` added up with room for a reload to add or grow tenants
    /// (twice the sum, at least [`POOL_HEADROOM_TASKS`] more, within
    /// [`DEFAULT_POOL_TASKS_CAP`] unless the sum itself is larger). An unused reserved
    /// sandbox costs address space (32.25 GiB), not memory.
    pub fn pool_tasks(&self) -> u32 {
        self.worker.pool_tasks.unwrap_or_else(|| {
            let needed = self.total_concurrency();
            needed
                .saturating_mul(2)
                .max(needed.saturating_add(POOL_HEADROOM_TASKS))
                .min(DEFAULT_POOL_TASKS_CAP)
                .max(needed)
        })
    }

    /// The memory of one pooled sandbox: `[worker] pool_memory_limit`, or by default the
    /// largest `memory_limit` or 4 GiB (a 32-bit memory's most) if that is more: the engine
    /// reserves 4 GiB of address space per memory anyway, so a reload may raise a
    /// `memory_limit` up to 4 GiB at no cost.
    pub fn pool_memory_limit(&self) -> u64 {
        self.worker.pool_memory_limit.map_or_else(
            || self.max_memory_limit().max(WASM32_MEMORY_BYTES),
            |size| size.0,
        )
    }

    /// Whether components are reloaded when their files change.
    pub fn watch_components(&self) -> bool {
        self.worker.watch_components.unwrap_or(true)
    }

    /// Drain timeout, with its default.
    pub fn drain_timeout(&self) -> Duration {
        self.worker
            .drain_timeout
            .map_or(DEFAULT_DRAIN_TIMEOUT, |d| d.0)
    }

    /// The worker name, defaulting to hostname-pid.
    pub fn worker_name(&self) -> String {
        self.worker.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        })
    }
}

/// Accepts `arn:PARTITION:iam::ACCOUNT:role/NAME` (a path before the name is allowed).
pub fn validate_role_arn(arn: &str) -> Result<()> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let well_formed = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && !parts[4].is_empty()
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|name| !name.is_empty());
    if !well_formed {
        bail!("{arn:?} is not an IAM role ARN; expected arn:aws:iam::ACCOUNT:role/NAME");
    }
    Ok(())
}

/// Accepts `arn:PARTITION:states:REGION:ACCOUNT:activity:NAME`.
pub fn validate_arn(arn: &str) -> Result<()> {
    let parts: Vec<&str> = arn.split(':').collect();
    let well_formed = parts.len() == 7
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "states"
        && !parts[3].is_empty()
        && !parts[4].is_empty()
        && parts[5] == "activity"
        && !parts[6].is_empty();
    if !well_formed {
        bail!(
            "{arn:?} is not an activity ARN; expected arn:aws:states:REGION:ACCOUNT:activity:NAME \
             (aws stepfunctions create-activity --name NAME prints it)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_full_config_parses_with_human_units_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "orders.wasm", "");
        let path = write(
            dir.path(),
            "worker.toml",
            r#"
            [worker]
            name = "w1"
            region = "eu-west-1"
            endpoint_url = "http://127.0.0.1:4566"
            drain_timeout = "10s"

            [[activity]]
            arn = "arn:aws:states:eu-west-1:123456789012:activity:orders"
            component = "orders.wasm"
            max_concurrency = 8
            pollers = 2
            timeout = "30s"
            memory_limit = "64MiB"
            heartbeat_interval = "20s"
            instance_reuse = 50
            instance_idle_timeout = "2m"
            ready_instances = 0
            [activity.wasi]
            env = { REGION = "eu-west-1" }
            [activity.outbound]
            allowed_hosts = ["https://api.example.com"]
            connect_timeout = "2s"
            [activity.host]
            max_log_lines = 10
            [activity.cpu]
            max_cores = 3
            "#,
        );
        let config = Config::load(&path).unwrap();
        let config = config.validate().unwrap();
        let activity = &config.activities[0];
        assert_eq!(activity.component, dir.path().join("orders.wasm"));
        assert_eq!(activity.limits().timeout, Duration::from_secs(30));
        assert_eq!(
            activity.instance_policy(),
            InstancePolicy {
                reuse: 50,
                idle_timeout: Duration::from_secs(120),
                ready: 0
            }
        );
        assert_eq!(activity.limits().memory_limit, 64 << 20);
        assert_eq!(
            activity.heartbeat_interval.unwrap().0,
            Duration::from_secs(20)
        );
        assert_eq!(config.drain_timeout(), Duration::from_secs(10));
        assert_eq!(config.worker_name(), "w1");
        assert_eq!(config.total_concurrency(), 8);
        let grants = activity.grants(&config.worker);
        assert_eq!(grants.wasi.env, [("REGION".into(), "eu-west-1".into())]);
        assert_eq!(grants.host.lines, 10);
        assert_eq!(
            activity.capabilities.outbound.limits().connect_timeout,
            Duration::from_secs(2)
        );
        assert_eq!(activity.capabilities.cpu.max_cores, Some(3));
    }

    #[test]
    fn a_flat_key_of_an_earlier_version_is_refused_naming_its_new_table() {
        let arn = "arn:aws:states:us-east-1:1:activity:a";
        for (old, table, new) in [
            (
                "allowed_outbound_hosts = []",
                "[activity.outbound]",
                "`allowed_hosts`",
            ),
            (
                "outbound_connect_timeout = \"1s\"",
                "[activity.outbound]",
                "`connect_timeout`",
            ),
            (
                "max_outbound_in_flight = 3",
                "[activity.outbound]",
                "`max_in_flight`",
            ),
            ("env = {}", "[activity.wasi]", "`env`"),
            ("max_cores = 1", "[activity.cpu]", "`max_cores`"),
        ] {
            let err = load_error(&format!(
                "[[activity]]\narn = \"{arn}\"\ncomponent = \"g.wasm\"\n{old}\n"
            ));
            assert!(
                err.contains("worker.toml")
                    && err.contains("has moved")
                    && err.contains(table)
                    && err.contains(new),
                "{old}: {err}"
            );
        }
        let err = load_error(&format!(
            "[[activity]]\narn = \"{arn}\"\ncomponent = \"g.wasm\"\n[activity.outbound]\nallowed_host = []\n"
        ));
        assert!(
            err.contains("[activity.outbound]") && err.contains("allowed_host"),
            "{err}"
        );
        let err = load_error(&format!(
            "[[activity]]\narn = \"{arn}\"\ncomponent = \"g.wasm\"\n[activity.cpu]\nmax_cores = 0\n"
        ));
        assert!(
            err.contains("[activity.cpu]") && err.contains("key `max_cores` must be at least 1"),
            "{err}"
        );
    }

    fn load_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "g.wasm", "");
        let path = write(dir.path(), "worker.toml", text);
        let error = Config::load(&path)
            .and_then(|config| config.validate())
            .unwrap_err();
        format!("{error:#}")
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_fix() {
        let arn = "arn:aws:states:us-east-1:1:activity:a";
        let one = |extra: &str| {
            format!("[[activity]]\narn = \"{arn}\"\ncomponent = \"g.wasm\"\n{extra}\n")
        };
        // (what is wrong, the file, what the error must say: every piece).
        let cases: Vec<(&str, String, Vec<&str>)> = vec![
            ("a misspelt key", one("max_concurency = 3"), vec!["worker.toml", "unknown key `max_concurency`"]),
            (
                "an ARN that is not one",
                "[[activity]]\narn = \"orders\"\ncomponent = \"g.wasm\"\n".into(),
                vec!["key `arn`", "arn:aws:states:REGION"],
            ),
            (
                "a missing component",
                format!("[[activity]]\narn = \"{arn}\"\ncomponent = \"missing.wasm\"\n"),
                vec!["key `component`", "missing.wasm does not exist"],
            ),
            (
                "a directory as the component",
                format!("[[activity]]\narn = \"{arn}\"\ncomponent = \".\"\n"),
                vec!["key `component`", "is a directory"],
            ),
            ("a duration that is not one", one("timeout = \"soon\""), vec!["invalid duration \"soon\""]),
            ("more pollers than slots", one("max_concurrency = 2\npollers = 3"), vec!["key `pollers`"]),
            ("no instance at all", one("instance_reuse = 0"), vec!["key `instance_reuse` must be at least 1", "fresh instance per task"]),
            (
                "more ready instances than slots",
                one("max_concurrency = 2\nready_instances = 3"),
                vec!["key `ready_instances` is 3", "max_concurrency (2)"],
            ),
            (
                "an idle timeout without reuse",
                one("instance_idle_timeout = \"5m\""),
                vec!["key `instance_idle_timeout` needs `instance_reuse` over 1"],
            ),
            (
                "a too short idle timeout",
                one("instance_reuse = 10\ninstance_idle_timeout = \"1ms\""),
                vec!["key `instance_idle_timeout` must be at least 100ms"],
            ),
            ("a word as a number", one("max_concurrency = \"four\""), vec!["worker.toml", "max_concurrency"]),
            ("a negative number", one("pollers = -1"), vec!["worker.toml", "pollers"]),
            ("a number as a duration", one("timeout = 30"), vec!["worker.toml", "timeout"]),
            ("a negative size", one("memory_limit = \"-5MiB\""), vec!["worker.toml", "invalid size"]),
            ("a list as a table", one("[activity.wasi]\nenv = [\"A=1\"]"), vec!["worker.toml", "[activity.wasi]", "env"]),
            (
                "a string as a list",
                one("[activity.outbound]\nallowed_hosts = \"https://x.example\""),
                vec!["worker.toml", "[activity.outbound]", "allowed_hosts"],
            ),
            ("a word as a count", one("[activity.host]\nmax_log_lines = \"many\""), vec!["worker.toml", "[activity.host]", "max_log_lines"]),
            (
                "an empty log line",
                one("[activity.host]\nmax_log_line_bytes = 0"),
                vec!["[activity.host]", "key `max_log_line_bytes` must be more than 0"],
            ),
            (
                "no outbound request in flight",
                one("[activity.outbound]\nmax_in_flight = 0"),
                vec!["[activity.outbound]", "key `max_in_flight` must be more than 0"],
            ),
            (
                "an AWS service that is not an endpoint prefix",
                one("[activity.aws]\nservices = [\"S3 \"]"),
                vec!["[activity.aws]", "key `services`", "endpoint prefix"],
            ),
            (
                "a region that is not one",
                one("[activity.aws]\nservices = [\"s3\"]\nregion = \"europe\""),
                vec!["[activity.aws]", "key `region`", "eu-west-1"],
            ),
            (
                "an AWS endpoint with a path",
                one("[activity.aws]\nservices = [\"s3\"]\nendpoint_url = \"http://127.0.0.1:4566/x\""),
                vec!["[activity.aws]", "key `endpoint_url`", "scheme://host[:port]"],
            ),
            (
                "a large output bucket without S3 for the guests",
                one("[activity.large_output]\nbucket = \"outputs-bucket\""),
                vec!["[activity.large_output]", "add \"s3\" to [activity.aws] services"],
            ),
            (
                "an external id without its role",
                one("[activity.aws]\nservices = [\"s3\"]\nexternal_id = \"x\""),
                vec!["[activity.aws]", "key `external_id` needs `role_arn`"],
            ),
            (
                "a secret that is not a reference (not echoed: it may be the secret)",
                one("[activity.config]\nsecrets = { api_key = \"sk-live-hunter2\" }"),
                vec!["[activity.config]", "secretsmanager:NAME", "ssm:/NAME", "belongs in `values`"],
            ),
            (
                "a Secrets Manager reference without a name",
                one("[activity.config]\nsecrets = { api_key = \"secretsmanager:#key\" }"),
                vec!["[activity.config]", "names no secret", "secretsmanager:NAME#JSON_KEY"],
            ),
            (
                "a key both plain and secret",
                one("[activity.config]\nvalues = { k = \"v\" }\nsecrets = { k = \"ssm:/k\" }"),
                vec!["[activity.config]", "key \"k\" is in both `values` and `secrets`"],
            ),
            (
                "an empty key",
                one("[activity.config]\nvalues = { \"\" = \"v\" }"),
                vec!["[activity.config]", "a key is empty"],
            ),
            (
                "a refresh too often",
                one("[activity.config]\nsecrets = { k = \"ssm:/k\" }\nrefresh = \"100ms\""),
                vec!["[activity.config]", "key `refresh`", "at least 1s"],
            ),
            (
                "a refresh without secrets",
                one("[activity.config]\nvalues = { k = \"v\" }\nrefresh = \"1m\""),
                vec!["[activity.config]", "key `refresh` is for `secrets`"],
            ),
            (
                "a registry component checked before it is pulled",
                format!("[[activity]]\narn = \"{arn}\"\ncomponent = \"oci://r.example/orders:v1\"\n"),
                vec!["key `component`", "oci://r.example/orders:v1", "pulled from its registry"],
            ),
            (
                "a pool smaller than the activities",
                format!("[worker]\npool_tasks = 3\n{}", one("max_concurrency = 4")),
                vec!["pool_tasks is 3", "adds up to 4"],
            ),
            (
                "more tasks than a process may hold",
                one("max_concurrency = 4000000000\npollers = 1"),
                vec!["max_concurrency adds up to 4000000000", "100000 tasks", "more worker processes"],
            ),
            (
                "two activities past u32 together",
                format!(
                    "{}[[activity]]\narn = \"{arn}2\"\ncomponent = \"g.wasm\"\nmax_concurrency = 4294967295\n",
                    one("max_concurrency = 4294967295")
                ),
                vec!["adds up to 8589934590", "100000 tasks", "more worker processes"],
            ),
            (
                "a pool past a process's tasks",
                format!("[worker]\npool_tasks = 200000\n{}", one("")),
                vec!["pool_tasks is 200000", "100000 tasks", "more worker processes"],
            ),
            (
                "a pool memory below an activity's",
                format!("[worker]\npool_memory_limit = \"64MiB\"\n{}", one("")),
                vec!["pool_memory_limit is 64MiB", "128MiB"],
            ),
            ("an activity listed twice", format!("{}{}", one(""), one("")), vec!["listed twice"]),
            ("no activity", "[worker]\nname = \"w\"\n".into(), vec!["no activities"]),
            ("a role that is not an IAM role", one("role_arn = \"tenant-b\""), vec!["key `role_arn`", "arn:aws:iam::ACCOUNT:role/NAME"]),
            ("an external id without a role", one("external_id = \"x\""), vec!["key `external_id` needs `role_arn`"]),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter_map(|(what, text, said)| {
                let err = load_error(text);
                let missing: Vec<&&str> =
                    said.iter().filter(|piece| !err.contains(**piece)).collect();
                (!missing.is_empty()).then(|| format!("{what}: no {missing:?} in: {err}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} cases:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n\n")
        );
    }
}
