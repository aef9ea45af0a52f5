//! The worker's totals (its `worker stopped` line, [`crate::worker::Worker::run`]'s result),
//! read off the Prometheus counters in [`Metrics`]: each event is counted once, there, and
//! a total is a sum over its series.

use crate::worker::metrics::Metrics;
use serde::Serialize;
use std::sync::Arc;

/// Reads the worker's totals at any time, while it runs or after.
#[derive(Clone)]
pub struct WorkerStats(pub(crate) Arc<Metrics>);

/// The worker's totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// GetActivityTask calls that returned (with or without a task).
    pub polls: u64,
    /// GetActivityTask calls that failed.
    pub poll_errors: u64,
    /// Tasks received.
    pub tasks_started: u64,
    /// Tasks that ended with a success to report (whether or not the report landed: see
    /// `reports_refused` and `report_errors`).
    pub succeeded: u64,
    /// Tasks that ended with a failure to report (likewise).
    pub failed: u64,
    /// Tasks stopped and not reported because Step Functions no longer knew them.
    pub abandoned: u64,
    /// Reports refused because the task was over (`TaskTimedOut`, `TaskDoesNotExist`) or its
    /// token no longer valid (`InvalidToken`).
    pub reports_refused: u64,
    /// Reports that could not be delivered at all (logged with their outcome).
    pub report_errors: u64,
    /// SendTaskHeartbeat calls that succeeded.
    pub heartbeats_sent: u64,
    /// SendTaskHeartbeat calls that failed, whatever the reason.
    pub heartbeat_errors: u64,
}

impl WorkerStats {
    /// The totals now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let metrics = &self.0;
        let poll_errors = metrics
            .api_errors
            .sum(|labels| labels.operation == "GetActivityTask");
        let tasks_ending = |outcome: &str| metrics.tasks.sum(|labels| labels.outcome == outcome);
        let heartbeats = |result: &str| metrics.heartbeats.sum(|labels| labels.result == result);
        StatsSnapshot {
            polls: metrics
                .api_calls
                .sum(|labels| labels.operation == "GetActivityTask")
                .saturating_sub(poll_errors),
            poll_errors,
            tasks_started: metrics.tasks_received.sum(|_| true),
            succeeded: tasks_ending("succeeded"),
            failed: tasks_ending("failed"),
            abandoned: tasks_ending("abandoned"),
            reports_refused: metrics.api_errors.sum(|labels| {
                labels.operation.starts_with("SendTask")
                    && labels.operation != "SendTaskHeartbeat"
                    && matches!(labels.kind.as_str(), "task_gone" | "invalid_token")
            }),
            report_errors: metrics.reports.sum(|labels| labels.result == "lost"),
            heartbeats_sent: heartbeats("sent"),
            heartbeat_errors: heartbeats("failed"),
        }
    }
}

impl StatsSnapshot {
    /// Logs the totals as fields of one line.
    pub fn log(&self, message: &str) {
        tracing::info!(
            polls = self.polls,
            poll_errors = self.poll_errors,
            tasks_started = self.tasks_started,
            succeeded = self.succeeded,
            failed = self.failed,
            abandoned = self.abandoned,
            reports_refused = self.reports_refused,
            report_errors = self.report_errors,
            heartbeats_sent = self.heartbeats_sent,
            heartbeat_errors = self.heartbeat_errors,
            "{message}"
        );
    }
}
