//! One task's lifecycle in the worker: journal it, run it in the sandbox with its heartbeat,
//! stop it if the drain timeout ends first, journal its outcome, free its slot, report its
//! outcome (within the activity's bound on reports in flight), mark it done in the journal,
//! and log one `task finished` line.

use crate::sandbox::host_api::{Interrupt, InterruptReason};
use crate::sandbox::{Outcome, Task, TaskEnd, TaskStats};
use crate::worker::activity::{ActivitySpec, Shared};
use crate::worker::heartbeat::TaskHeartbeat;
use crate::worker::metrics::{activity_label, InstanceLabels, Metrics};
use crate::worker::report::{report, ReportError};
use crate::worker::sfn::ActivityTask;
use crate::worker::slots::TaskSlot;
use crate::worker::traces::{TaskTrace, Timeline};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

/// Runs `task` of the activity `arn` to its end with `spec` (the activity's settings when
/// the task arrived), in the task `slot` its poll held; every log line carries the activity
/// and task id. The slot is freed as soon as the guest has ended: another poll can then
/// start while this task's report is sent, one of at most `max_concurrency` reports in
/// flight for the activity (a slow Step Functions holds the slots back, so memory stays
/// bounded).
pub(crate) async fn run_task(
    shared: &Shared,
    arn: &Arc<str>,
    spec: &ActivitySpec,
    task: ActivityTask,
    slot: TaskSlot,
) {
    let task_id = task.task_id();
    let span = tracing::info_span!("task", activity = %arn, task_id = %task_id);
    async {
        let label = activity_label(arn);
        shared.metrics.tasks_received.inc(&label);
        let in_flight = shared.metrics.in_flight.get_or_create_owned(&label);
        in_flight.inc();
        let started = Instant::now();
        let mut timeline = Timeline::start();
        let journal = shared.journal.as_deref();
        let entry = match journal {
            Some(journal) => {
                let entry = journal.started(arn, &task.token).await;
                timeline.end_phase("journal");
                Some(entry)
            }
            None => None,
        };
        let (end, stats) = run_in_sandbox(shared, arn, spec, &task, task_id.clone()).await;
        timeline.end_sandbox(&stats.phases);
        in_flight.dec();
        record_sandbox(&shared.metrics, arn, &stats);
        if let (Some(journal), Some(entry), TaskEnd::Report(outcome)) = (journal, &entry, &end) {
            journal.outcome(entry, outcome).await;
            timeline.end_phase("journal outcome");
        }
        let _report_slot = spec
            .report_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the report semaphore is never closed");
        timeline.end_phase("wait for slot");
        drop(slot);
        let reports_in_flight = shared.metrics.reports_in_flight.get_or_create_owned(&label);
        reports_in_flight.inc();
        let reported = match &end {
            TaskEnd::Abandoned(why) => {
                shared.metrics.task_finished(arn, "abandoned", None);
                tracing::warn!(
                    outcome = "abandoned",
                    reason = %why,
                    elapsed_ms = ms(started),
                    "task finished: Step Functions no longer knows it, nothing reported"
                );
                true
            }
            TaskEnd::Report(outcome) => {
                let reported = report(&spec.client, &shared.metrics, &task.token, outcome).await;
                timeline.end_phase("report");
                let landed = !matches!(reported, Err(ReportError::Undelivered(_)));
                log_reported(shared, arn, outcome, reported, &stats, started);
                landed
            }
        };
        if let Some(traces) = &shared.traces {
            let (outcome, error) = end_labels(&end);
            let requests = stats.usage.outbound.0.lock().unwrap();
            traces.record(&TaskTrace {
                activity: arn,
                task_id: &task_id,
                worker: &shared.worker_name,
                instance: stats.instance.label(),
                outcome,
                error,
                phases: timeline.into_phases(),
                requests: &requests,
            });
        }
        if let (Some(journal), Some(entry)) = (journal, entry) {
            if reported {
                journal.done(entry);
            } // else kept: the next start reports it again
        }
        reports_in_flight.dec();
        shared
            .metrics
            .task_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }
    .instrument(span)
    .await
}

/// Runs the guest with its heartbeat; once the drain timeout has ended, interrupts it so it
/// is reported as `Worker.ShuttingDown`.
async fn run_in_sandbox(
    shared: &Shared,
    arn: &Arc<str>,
    spec: &ActivitySpec,
    task: &ActivityTask,
    task_id: String,
) -> (TaskEnd, TaskStats) {
    let interrupt = Interrupt::default();
    let heartbeat = Arc::new(TaskHeartbeat::new(
        spec.client.clone(),
        task.token.clone(),
        interrupt.clone(),
        shared.metrics.clone(),
    ));
    let _ticker = spec
        .config
        .heartbeat_interval
        .map(|interval| heartbeat.start_ticker(interval.0));
    let sandbox_task = Task {
        input: task.input.clone(),
        activity_arn: arn.clone(),
        worker_name: shared.worker_name.clone(),
        task_id,
        heartbeat,
        interrupt: interrupt.clone(),
    };
    let run = spec.handler.run(sandbox_task, &spec.limits, &spec.grants);
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

/// Records what the sandbox saw of a task: its time, peak memory and what it used of each
/// capability.
fn record_sandbox(metrics: &Metrics, activity: &str, stats: &TaskStats) {
    metrics
        .sandbox_seconds
        .get_or_create(&activity_label(activity))
        .observe(stats.elapsed.as_secs_f64());
    metrics.guest_memory(activity, stats.peak_memory);
    metrics.capabilities.record(activity, &stats.usage);
    metrics.instances.inc(&InstanceLabels {
        activity: activity.to_string(),
        instance: stats.instance.label().to_string(),
    });
}

/// Counts and logs a reported task: one line whatever happened to the report.
fn log_reported(
    shared: &Shared,
    arn: &str,
    outcome: &Outcome,
    reported: Result<(), ReportError>,
    stats: &TaskStats,
    started: Instant,
) {
    let (status, error) = outcome_labels(outcome);
    shared.metrics.task_finished(arn, status, error);
    let (run_ms, elapsed_ms) = (stats.elapsed.as_secs_f64() * 1e3, ms(started));
    match reported {
        Ok(()) => {
            tracing::info!(
                outcome = status,
                error,
                run_ms,
                elapsed_ms,
                peak_memory = stats.peak_memory,
                outbound_requests = stats.usage.outbound.sent(),
                outbound_denied = stats.usage.outbound.denied(),
                "task finished"
            );
        }
        Err(ReportError::TaskGone(code)) => {
            tracing::warn!(
                outcome = status,
                error,
                report = %code,
                elapsed_ms,
                "task finished but its result was refused: the task had timed out or was gone"
            );
        }
        Err(ReportError::Undelivered(message)) => {
            Metrics::count(&shared.metrics.reports, "lost");
            tracing::error!(
                outcome = status,
                error,
                report_error = %message,
                result = %serde_json::to_string(outcome).unwrap_or_default(),
                elapsed_ms,
                "task finished but its result could not be reported (with a journal, the next \
                 start reports it again)"
            );
        }
    }
}

/// How a reported task ended, as its log line, metrics and trace name it: `succeeded` or
/// `failed`, and the error name of a failure.
fn outcome_labels(outcome: &Outcome) -> (&'static str, Option<&str>) {
    match outcome {
        Outcome::Succeeded { .. } => ("succeeded", None),
        Outcome::Failed { error, .. } => ("failed", Some(error.as_str())),
    }
}

/// [`outcome_labels`] of any end; `abandoned` when nothing was reported.
fn end_labels(end: &TaskEnd) -> (&'static str, Option<&str>) {
    match end {
        TaskEnd::Abandoned(_) => ("abandoned", None),
        TaskEnd::Report(outcome) => outcome_labels(outcome),
    }
}

/// Milliseconds since `started`.
fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e3
}
