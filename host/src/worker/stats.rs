//! The worker's counters: atomics any task can bump, and a snapshot to print or compare.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the worker did; read them at any time.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// GetActivityTask calls that returned (with or without a task).
    pub polls: AtomicU64,
    /// GetActivityTask calls that failed.
    pub poll_errors: AtomicU64,
    /// Tasks received.
    pub tasks_started: AtomicU64,
    /// Tasks reported with SendTaskSuccess.
    pub succeeded: AtomicU64,
    /// Tasks reported with SendTaskFailure.
    pub failed: AtomicU64,
    /// Tasks stopped and not reported because Step Functions no longer knew them.
    pub abandoned: AtomicU64,
    /// Reports refused because the task was over (`TaskTimedOut`, `TaskDoesNotExist`) or its
    /// token no longer valid (`InvalidToken`).
    pub reports_refused: AtomicU64,
    /// Reports that could not be delivered at all (logged with their outcome).
    pub report_errors: AtomicU64,
    /// SendTaskHeartbeat calls that succeeded.
    pub heartbeats_sent: AtomicU64,
    /// SendTaskHeartbeat calls that failed, whatever the reason.
    pub heartbeat_errors: AtomicU64,
}

/// A copy of [`WorkerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub polls: u64,
    pub poll_errors: u64,
    pub tasks_started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub abandoned: u64,
    pub reports_refused: u64,
    pub report_errors: u64,
    pub heartbeats_sent: u64,
    pub heartbeat_errors: u64,
}

impl WorkerStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            polls: get(&self.polls),
            poll_errors: get(&self.poll_errors),
            tasks_started: get(&self.tasks_started),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            abandoned: get(&self.abandoned),
            reports_refused: get(&self.reports_refused),
            report_errors: get(&self.report_errors),
            heartbeats_sent: get(&self.heartbeats_sent),
            heartbeat_errors: get(&self.heartbeat_errors),
        }
    }
}

impl StatsSnapshot {
    /// Logs the counters as fields of one line.
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

/// Adds one to `counter`.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
