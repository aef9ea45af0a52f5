//! The worker's metrics, in the Prometheus/OpenMetrics text format (served by
//! [`crate::worker::endpoints`]). Label values are bounded: activity ARNs from the config,
//! operation names, error kinds, and task errors reduced to the outcome table's names plus
//! `guest`. Every event is counted once, here; the worker's totals
//! ([`crate::worker::stats`]) are sums over these counters.

use crate::proc_status::resident_bytes;
use crate::sandbox::capability::CapabilityMetrics;
use crate::sandbox::outcome::WORKER_ERRORS;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Labels: the activity.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActivityLabel {
    /// The activity's ARN.
    pub activity: String,
}

/// Labels of a task's instance: its activity and where the instance came from (`fresh`,
/// `ready` or `warm`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The activity's ARN.
    pub activity: String,
    /// `fresh` (made for the task), `ready` (made ahead of it) or `warm` (kept from an
    /// earlier task).
    pub instance: String,
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

type Seconds = Family<ActivityLabel, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 100 µs to ~30 min.
    Histogram::new(exponential_buckets(0.0001, 2.0, 24))
}

/// Every metric the worker keeps.
pub struct Metrics {
    registry: Registry,
    /// Tasks received, by activity.
    pub tasks_received: Counters<ActivityLabel>,
    /// Tasks finished, by activity, outcome and error.
    pub tasks: Counters<TaskLabels>,
    /// Time from receiving a task to its report.
    pub task_seconds: Seconds,
    /// Time a task spent in its sandbox.
    pub sandbox_seconds: Seconds,
    /// The most linear memory a guest of the activity has held.
    pub guest_peak_memory: Family<ActivityLabel, Gauge>,
    /// Tasks run, by activity and where their instance came from.
    pub instances: Counters<InstanceLabels>,
    /// Tasks whose guest is running now (each holds a task slot).
    pub in_flight: Family<ActivityLabel, Gauge>,
    /// Reports being sent now: tasks whose guest has ended and freed its slot.
    pub reports_in_flight: Family<ActivityLabel, Gauge>,
    /// Task slots neither running a task nor held by an open poll.
    pub free_slots: Family<ActivityLabel, Gauge>,
    /// Long polls open now.
    pub open_polls: Family<ActivityLabel, Gauge>,
    /// Polls answered without a task.
    pub empty_polls: Counters<ActivityLabel>,
    /// Step Functions calls made.
    pub api_calls: Counters<OperationLabels>,
    /// Step Functions calls that failed.
    pub api_errors: Counters<ApiErrorLabels>,
    /// Heartbeats `sent` and `failed`.
    pub heartbeats: Counters<ResultLabel>,
    /// Report attempts `retried`, and reports `lost` (never delivered).
    pub reports: Counters<ResultLabel>,
    /// Each capability's own metrics (e.g. outbound requests).
    pub capabilities: CapabilityMetrics,
    /// Time it took to load (compile or map) each activity's component.
    pub component_load_seconds: Family<ActivityLabel, Gauge<f64, AtomicU64>>,
    /// Reloads `applied` and `refused` (SIGHUP, or a component file changed).
    pub reloads: Counters<ResultLabel>,
    /// Syncs of the task journal's file (one covers every record waiting at the time).
    pub journal_syncs: Counter,
    /// Tasks the journal holds that are not done (running, or their report not landed).
    pub journal_open_entries: Gauge,
    /// Tasks an earlier worker left, replayed at start: `outcome_reported`, `restarted`
    /// (failed with `Worker.Restarted`), `closed` (over already) or `kept` (undelivered).
    pub journal_replayed: Counters<ResultLabel>,
    /// The process's resident memory, read at each scrape.
    process_resident_memory: Gauge,
    /// Tasks running over task slots, by activity and `all` (every served activity's),
    /// worked out at each scrape: what an autoscaler scales on.
    busy_ratio: Family<ActivityLabel, Gauge<f64, AtomicU64>>,
    /// Each served activity's task slots (`max_concurrency`), as the last reload left them.
    slots: Mutex<Vec<(ActivityLabel, u32)>>,
}

/// The `activity` label of the busy ratio over every served activity.
pub const ALL_ACTIVITIES: &str = "all";

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("sfn_worker");
        let metrics = Metrics {
            tasks_received: Counters::default(),
            tasks: Counters::default(),
            task_seconds: Seconds::new_with_constructor(seconds_histogram),
            sandbox_seconds: Seconds::new_with_constructor(seconds_histogram),
            guest_peak_memory: Family::default(),
            instances: Counters::default(),
            in_flight: Family::default(),
            reports_in_flight: Family::default(),
            free_slots: Family::default(),
            open_polls: Family::default(),
            empty_polls: Counters::default(),
            api_calls: Counters::default(),
            api_errors: Counters::default(),
            heartbeats: Counters::default(),
            reports: Counters::default(),
            capabilities: CapabilityMetrics::default(),
            component_load_seconds: Family::default(),
            reloads: Counters::default(),
            journal_syncs: Counter::default(),
            journal_open_entries: Gauge::default(),
            journal_replayed: Counters::default(),
            process_resident_memory: Gauge::default(),
            busy_ratio: Family::default(),
            slots: Mutex::default(),
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
            ("tasks_received", "Tasks received", tasks_received),
            ("tasks", "Tasks finished", tasks),
            ("task_seconds", "Time from receiving a task to its report", task_seconds),
            ("sandbox_seconds", "Time a task spent in its sandbox", sandbox_seconds),
            ("guest_peak_memory_bytes", "The most linear memory a guest of the activity has held", guest_peak_memory),
            ("task_instances", "Tasks run, by where their instance came from (fresh, ready or warm)", instances),
            ("tasks_in_flight", "Tasks whose guest is running now", in_flight),
            ("reports_in_flight", "Reports being sent now, after their guest freed its slot", reports_in_flight),
            ("free_slots", "Task slots neither running a task nor held by an open poll", free_slots),
            ("open_polls", "GetActivityTask long polls open now", open_polls),
            ("empty_polls", "Polls answered without a task", empty_polls),
            ("api_calls", "Step Functions calls made", api_calls),
            ("api_errors", "Step Functions calls that failed", api_errors),
            ("heartbeats", "SendTaskHeartbeat calls, sent or failed", heartbeats),
            ("reports", "Report attempts retried, and reports lost", reports),
            ("component_load_seconds", "Time to load each activity's component", component_load_seconds),
            ("reloads", "Reloads applied or refused", reloads),
            ("journal_syncs", "Syncs of the task journal's file", journal_syncs),
            ("journal_open_entries", "Tasks in the journal not yet done", journal_open_entries),
            ("journal_replayed", "Tasks an earlier worker left, replayed at start, by result", journal_replayed),
            ("process_resident_memory_bytes", "Resident memory of the worker process", process_resident_memory),
            ("busy_ratio", "Tasks running over task slots, by activity and all (scale on it)", busy_ratio),
        ];
        metrics.capabilities.register(&mut registry);
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
        self.tasks.inc(&TaskLabels {
            activity: activity.to_string(),
            outcome: outcome.to_string(),
            error: error.to_string(),
        });
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
        self.api_calls.inc(&OperationLabels {
            operation: operation.to_string(),
        });
        if let Some(kind) = error_kind {
            self.api_errors.inc(&ApiErrorLabels {
                operation: operation.to_string(),
                kind: kind.to_string(),
            });
        }
    }

    /// Counts one `result` in `family` (heartbeats, reports).
    pub fn count(family: &Counters<ResultLabel>, result: &str) {
        family.inc(&ResultLabel {
            result: result.to_string(),
        });
    }

    /// Sets the activities served now and their task slots (the busy ratio's denominators).
    pub fn set_slots(&self, served: impl IntoIterator<Item = (String, u32)>) {
        let served: Vec<(ActivityLabel, u32)> = served
            .into_iter()
            .map(|(arn, slots)| (activity_label(&arn), slots))
            .collect();
        let mut slots = self.slots.lock().unwrap();
        for (gone, _) in slots
            .iter()
            .filter(|(label, _)| !served.iter().any(|(l, _)| l == label))
        {
            self.busy_ratio.remove(gone);
        }
        *slots = served;
    }

    /// Works out the busy ratios from the tasks running now.
    fn update_busy_ratio(&self) {
        let slots = self.slots.lock().unwrap();
        let (mut busy_all, mut slots_all) = (0.0, 0.0);
        for (label, count) in slots.iter() {
            let busy = self.in_flight.get_or_create(label).get().max(0) as f64;
            let count = f64::from(*count);
            self.busy_ratio
                .get_or_create(label)
                .set(busy / count.max(1.0));
            busy_all += busy;
            slots_all += count;
        }
        let ratio = if slots_all > 0.0 {
            busy_all / slots_all
        } else {
            0.0
        };
        self.busy_ratio
            .get_or_create(&activity_label(ALL_ACTIVITIES))
            .set(ratio);
    }

    /// The text exposition, with the process's memory and the busy ratios worked out now.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_bytes(None) {
            self.process_resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        self.update_busy_ratio();
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String does not fail");
        text
    }
}

/// A counter family that also keeps a handle on each of its series, so that totals over
/// labels can be read (prometheus-client's `Family` cannot list its series).
#[derive(Debug)]
pub struct Counters<L> {
    family: Family<L, Counter>,
    series: Arc<Mutex<Vec<(L, Counter)>>>,
}

impl<L> Default for Counters<L>
where
    L: Clone + Hash + Eq,
{
    fn default() -> Counters<L> {
        Counters {
            family: Family::default(),
            series: Arc::default(),
        }
    }
}

impl<L> Clone for Counters<L> {
    fn clone(&self) -> Counters<L> {
        Counters {
            family: self.family.clone(),
            series: self.series.clone(),
        }
    }
}

impl<L> Counters<L>
where
    L: Clone + Hash + Eq,
{
    /// Adds one to the series of `labels` (created at zero on first use).
    pub fn inc(&self, labels: &L) {
        if let Some(counter) = self.family.get(labels) {
            counter.inc();
            return;
        }
        let mut series = self.series.lock().unwrap();
        // Series are only created under this lock, so each is listed once.
        if self.family.get(labels).is_none() {
            series.push((labels.clone(), self.family.get_or_create_owned(labels)));
        }
        drop(series);
        self.family.get_or_create(labels).inc();
    }

    /// The sum of the series whose labels `pick` accepts.
    pub fn sum(&self, pick: impl Fn(&L) -> bool) -> u64 {
        let series = self.series.lock().unwrap();
        series
            .iter()
            .filter(|(labels, _)| pick(labels))
            .map(|(_, counter)| counter.get())
            .sum()
    }
}

impl<L> TypedMetric for Counters<L> {
    const TYPE: MetricType = MetricType::Counter;
}

impl<L> EncodeMetric for Counters<L>
where
    L: Clone + Hash + Eq + EncodeLabelSet,
{
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.family.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        self.family.is_empty()
    }
}

/// The label of `activity`.
pub fn activity_label(activity: &str) -> ActivityLabel {
    ActivityLabel {
        activity: activity.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_sums_every_series_once_even_when_threads_create_it_together() {
        let counters = Counters::<ResultLabel>::default();
        std::thread::scope(|scope| {
            for thread in 0..8 {
                let counters = &counters;
                scope.spawn(move || {
                    for i in 0..1_000 {
                        let result = if (thread + i) % 2 == 0 {
                            "sent"
                        } else {
                            "failed"
                        };
                        counters.inc(&ResultLabel {
                            result: result.to_string(),
                        });
                    }
                });
            }
        });
        assert_eq!(counters.sum(|_| true), 8_000);
        assert_eq!(counters.sum(|labels| labels.result == "sent"), 4_000);
        let mut registry = Registry::default();
        registry.register("heartbeats", "test", counters.clone());
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("heartbeats_total{result=\"sent\"} 4000"),
            "{text}"
        );
    }
}
