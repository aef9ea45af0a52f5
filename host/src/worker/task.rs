//! One task's lifecycle in the worker: run it in the sandbox with its heartbeat, stop it if
//! the drain timeout ends first, report its outcome, and log one `task finished` line.

use crate::sandbox::host_api::{Interrupt, InterruptReason};
use crate::sandbox::{Outcome, Task, TaskEnd, TaskStats};
use crate::worker::heartbeat::TaskHeartbeat;
use crate::worker::report::{report, ReportError};
use crate::worker::sfn::ActivityTask;
use crate::worker::stats::bump;
use crate::worker::{Activity, Shared};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

/// Runs `task` of `activity` to its end; every log line carries the activity and task id.
pub(crate) async fn run_task(shared: &Shared, activity: &Activity, task: ActivityTask) {
    let span = tracing::info_span!("task", activity = %activity.arn, task_id = %task.task_id());
    async {
        bump(&shared.stats.tasks_started);
        let started = Instant::now();
        let (end, stats) = run_in_sandbox(shared, activity, &task).await;
        match end {
            TaskEnd::Abandoned(why) => {
                bump(&shared.stats.abandoned);
                tracing::warn!(
                    outcome = "abandoned",
                    reason = %why,
                    elapsed_ms = ms(started),
                    "task finished: Step Functions no longer knows it, nothing reported"
                );
            }
            TaskEnd::Report(outcome) => {
                let reported = report(&shared.client, &task.token, &outcome).await;
                log_reported(shared, &outcome, reported, &stats, started);
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the guest with its heartbeat; once the drain timeout has ended, interrupts it so it
/// is reported as `Worker.ShuttingDown`.
async fn run_in_sandbox(
    shared: &Shared,
    activity: &Activity,
    task: &ActivityTask,
) -> (TaskEnd, TaskStats) {
    let interrupt = Interrupt::default();
    let heartbeat = Arc::new(TaskHeartbeat::new(
        shared.client.clone(),
        task.token.clone(),
        interrupt.clone(),
        shared.stats.clone(),
    ));
    let _ticker = activity
        .config
        .heartbeat_interval
        .map(|interval| heartbeat.start_ticker(interval.0));
    let sandbox_task = Task {
        input: task.input.clone(),
        activity_arn: activity.arn.clone(),
        worker_name: shared.worker_name.clone(),
        task_id: task.task_id(),
        heartbeat,
        interrupt: interrupt.clone(),
    };
    let run = activity
        .handler
        .run(sandbox_task, &activity.limits, &activity.grants);
    let stop_when_drain_expires = async {
        shared.drain_expired.cancelled().await;
        interrupt.trigger(InterruptReason::ShuttingDown);
        std::future::pending().await
    };
    tokio::select! {
        ended = run => ended,
        never = stop_when_drain_expires => never,
    }
}

/// Counts and logs a reported task: one line whatever happened to the report.
fn log_reported(
    shared: &Shared,
    outcome: &Outcome,
    reported: Result<(), ReportError>,
    stats: &TaskStats,
    started: Instant,
) {
    let (status, error) = match outcome {
        Outcome::Succeeded { .. } => ("succeeded", None),
        Outcome::Failed { error, .. } => ("failed", Some(error.as_str())),
    };
    let (run_ms, elapsed_ms) = (stats.elapsed.as_secs_f64() * 1e3, ms(started));
    match reported {
        Ok(()) => {
            bump(if outcome.is_success() {
                &shared.stats.succeeded
            } else {
                &shared.stats.failed
            });
            tracing::info!(
                outcome = status,
                error,
                run_ms,
                elapsed_ms,
                peak_memory = stats.peak_memory,
                outbound_requests = stats.outbound_requests,
                outbound_denied = stats.outbound_denied,
                "task finished"
            );
        }
        Err(ReportError::TaskGone(code)) => {
            bump(&shared.stats.reports_refused);
            tracing::warn!(
                outcome = status,
                error,
                report = %code,
                elapsed_ms,
                "task finished but its result was refused: the task had timed out or was gone"
            );
        }
        Err(ReportError::Undelivered(message)) => {
            bump(&shared.stats.report_errors);
            tracing::error!(
                outcome = status,
                error,
                report_error = %message,
                result = %serde_json::to_string(outcome).unwrap_or_default(),
                elapsed_ms,
                "task finished but its result could not be reported"
            );
        }
    }
}

/// Milliseconds since `started`.
fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}
