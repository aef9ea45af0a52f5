//! The worker's metrics, in the Prometheus/OpenMetrics text format (served by
//! [`crate::worker::endpoints`]). Label values are bounded: activity ARNs from the config,
//! operation names, error kinds, and task errors reduced to the outcome table's names plus
//! `guest`.

use crate::sandbox::outcome::WORKER_ERRORS;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels: the activity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabel {
    /// The activity's ARN.
    pub activity: String,
}

/// Labels of a finished task.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// The activity's ARN.
    pub activity: String,
    /// `succeeded`, `failed` or `abandoned`.
    pub outcome: String,
    /// The error of a failed task: a name from the outcome table, or `guest`; else empty.
    pub error: String,
}

/// Labels of a Step Functions call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `GetActivityTask`, `SendTaskSuccess`, `SendTaskFailure` or `SendTaskHeartbeat`.
    pub operation: String,
}

/// Labels of a failed Step Functions call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    /// The operation.
    pub operation: String,
    /// What kind of error: `activity_gone`, `task_gone`, `invalid_token`, `retryable`, `rejected`.
    pub kind: String,
}

/// Labels with a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// What happened.
    pub result: String,
}

/// Labels of a guest's outbound request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    /// The activity's ARN.
    pub activity: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`, `error` (no response) or `denied`.
    pub status: String,
}

type Seconds = Family<ActivityLabel, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs to ~30 min.
    Histogram::new(exponential_buckets(0.0001, 2.0, 24))
}

/// Every metric the worker keeps.
pub struct Metrics {
    registry: Registry,
    /// Tasks finished, by activity, outcome and error.
    pub tasks: Family<TaskLabels, Counter>,
    /// Time from receiving a task to its report.
    pub task_seconds: Seconds,
    /// Time a task spent in its sandbox.
    pub sandbox_seconds: Seconds,
    /// The most linear memory a guest of the activity has held.
    pub guest_peak_memory: Family<ActivityLabel, Gauge>,
    /// Tasks running now.
    pub in_flight: Family<ActivityLabel, Gauge>,
    /// Task slots neither running a task nor held by an open poll.
    pub free_slots: Family<ActivityLabel, Gauge>,
    /// Long polls open now.
    pub open_polls: Family<ActivityLabel, Gauge>,
    /// Polls answered without a task.
    pub empty_polls: Family<ActivityLabel, Counter>,
    /// Step Functions calls made.
    pub api_calls: Family<OperationLabels, Counter>,
    /// Step Functions calls that failed.
    pub api_errors: Family<ApiErrorLabels, Counter>,
    /// Heartbeats `sent` and `failed`.
    pub heartbeats: Family<ResultLabel, Counter>,
    /// Report attempts `retried`, and reports `lost` (never delivered).
    pub reports: Family<ResultLabel, Counter>,
    /// Guests' outbound HTTP requests, by status class.
    pub outbound: Family<OutboundLabels, Counter>,
    /// Time it took to load (compile or map) each activity's component.
    pub component_load_seconds: Family<ActivityLabel, Gauge<f64, AtomicU64>>,
    /// Reloads `applied` and `refused` (SIGHUP, or a component file changed).
    pub reloads: Family<ResultLabel, Counter>,
    /// The process's resident memory, read at each scrape.
    process_resident_memory: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("sfn_worker");
        let metrics = Metrics {
            tasks: Family::default(),
            task_seconds: Seconds::new_with_constructor(seconds_histogram),
            sandbox_seconds: Seconds::new_with_constructor(seconds_histogram),
            guest_peak_memory: Family::default(),
            in_flight: Family::default(),
            free_slots: Family::default(),
            open_polls: Family::default(),
            empty_polls: Family::default(),
            api_calls: Family::default(),
            api_errors: Family::default(),
            heartbeats: Family::default(),
            reports: Family::default(),
            outbound: Family::default(),
            component_load_seconds: Family::default(),
            reloads: Family::default(),
            process_resident_memory: Gauge::default(),
            registry: Registry::default(),
        };
        // (name, help, metric): one line each.
        macro_rules! register {
            ($(($name:literal, $help:literal, $metric:ident)),* $(,)?) => {
                $(registry.register($name, $help, metrics.$metric.clone());)*
            };
        }
        #[rustfmt::skip]
        register![
            ("tasks", "Tasks finished", tasks),
            ("task_seconds", "Time from receiving a task to its report", task_seconds),
            ("sandbox_seconds", "Time a task spent in its sandbox", sandbox_seconds),
            ("guest_peak_memory_bytes", "The most linear memory a guest of the activity has held", guest_peak_memory),
            ("tasks_in_flight", "Tasks running now", in_flight),
            ("free_slots", "Task slots neither running a task nor held by an open poll", free_slots),
            ("open_polls", "GetActivityTask long polls open now", open_polls),
            ("empty_polls", "Polls answered without a task", empty_polls),
            ("api_calls", "Step Functions calls made", api_calls),
            ("api_errors", "Step Functions calls that failed", api_errors),
            ("heartbeats", "SendTaskHeartbeat calls, sent or failed", heartbeats),
            ("reports", "Report attempts retried, and reports lost", reports),
            ("outbound_requests", "Guests' outbound HTTP requests by status class", outbound),
            ("component_load_seconds", "Time to load each activity's component", component_load_seconds),
            ("reloads", "Reloads applied or refused", reloads),
            ("process_resident_memory_bytes", "Resident memory of the worker process", process_resident_memory),
        ];
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts a finished task: `error` is reduced to the outcome table's names or `guest`.
    pub fn task_finished(&self, activity: &str, outcome: &str, error: Option<&str>) {
        let error = match error {
            Some(name) if WORKER_ERRORS.contains(&name) => name,
            Some(_) => "guest",
            None => "",
        };
        self.tasks
            .get_or_create(&TaskLabels {
                activity: activity.to_string(),
                outcome: outcome.to_string(),
                error: error.to_string(),
            })
            .inc();
    }

    /// Records a guest's peak memory if it is the activity's largest yet.
    pub fn guest_memory(&self, activity: &str, peak: u64) {
        let gauge = self
            .guest_peak_memory
            .get_or_create(&activity_label(activity));
        let peak = i64::try_from(peak).unwrap_or(i64::MAX);
        if peak > gauge.get() {
            gauge.set(peak);
        }
    }

    /// Counts a Step Functions call of `operation`, failed with `error_kind` if it did.
    pub fn api_call(&self, operation: &str, error_kind: Option<&str>) {
        self.api_calls
            .get_or_create(&OperationLabels {
                operation: operation.to_string(),
            })
            .inc();
        if let Some(kind) = error_kind {
            self.api_errors
                .get_or_create(&ApiErrorLabels {
                    operation: operation.to_string(),
                    kind: kind.to_string(),
                })
                .inc();
        }
    }

    /// Counts one `result` in `family` (heartbeats, reports).
    pub fn count(family: &Family<ResultLabel, Counter>, result: &str) {
        family
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the process's memory read now.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_memory() {
            self.process_resident_memory.set(rss);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String does not fail");
        text
    }
}

/// The label of `activity`.
pub fn activity_label(activity: &str) -> ActivityLabel {
    ActivityLabel {
        activity: activity.to_string(),
    }
}

/// Resident memory in bytes, from `/proc/self/status` (`VmRSS`, in KiB whatever the page
/// size).
fn resident_memory() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
