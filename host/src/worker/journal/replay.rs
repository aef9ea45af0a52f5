//! Replaying what an earlier worker left in the journal, before the first poll: a recorded
//! outcome is reported as it was recorded; a task without one is failed with
//! `Worker.Restarted`. A task Step Functions says is over (closed, timed out, an expired
//! token) is dropped quietly; one whose report cannot be delivered stays in the journal for
//! the next start.

use super::{Journal, Unfinished};
use crate::sandbox::outcome::RESTARTED;
use crate::sandbox::Outcome;
use crate::worker::metrics::Metrics;
use crate::worker::report::{report, ReportError};
use crate::worker::sfn::{task_id, SfnClient};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Reports replayed at once.
const REPLAYS_AT_ONCE: usize = 32;

/// Reports every task of `unfinished` with the client `served_client` gives for its activity,
/// or `own_client` (the worker's, with a warning) for an activity it no longer serves; returns
/// when each has been reported, dropped or kept.
pub(crate) async fn replay(
    journal: &Arc<Journal>,
    unfinished: Unfinished,
    served_client: impl Fn(&str) -> Option<SfnClient>,
    own_client: &SfnClient,
    metrics: &Arc<Metrics>,
) {
    if unfinished.is_empty() {
        return;
    }
    let total = unfinished.len();
    tracing::info!(
        journal = %journal.path().display(),
        tasks = total,
        "replaying the tasks an earlier worker left in the journal"
    );
    let at_once = Arc::new(Semaphore::new(REPLAYS_AT_ONCE));
    let mut replays = JoinSet::new();
    for (entry, task) in unfinished.tasks {
        let client = served_client(&task.activity).unwrap_or_else(|| {
            tracing::warn!(
                activity = %task.activity,
                task_id = %task_id(&task.token),
                "a journaled task of an activity this worker no longer serves: reported with \
                 the worker's own credentials"
            );
            own_client.clone()
        });
        let (journal, metrics) = (journal.clone(), metrics.clone());
        let cause = unfinished.restart_cause.clone();
        let at_once = at_once.clone();
        replays.spawn(async move {
            let _turn = at_once.acquire_owned().await;
            let (outcome, result) = match task.outcome {
                Some(outcome) => (outcome, "outcome_reported"),
                None => (Outcome::failed(RESTARTED, cause), "restarted"),
            };
            let result = match report(&client, &metrics, &task.token, &outcome).await {
                Ok(()) => {
                    journal.done(entry);
                    tracing::info!(activity = %task.activity, task_id = %task_id(&task.token), result, "replayed a journaled task");
                    result
                }
                Err(ReportError::TaskGone(code)) => {
                    journal.done(entry);
                    tracing::debug!(activity = %task.activity, task_id = %task_id(&task.token), %code, "a journaled task is over already");
                    "closed"
                }
                Err(ReportError::Undelivered(message)) => {
                    tracing::error!(
                        activity = %task.activity,
                        task_id = %task_id(&task.token),
                        error = %message,
                        "could not report a journaled task; it stays in the journal for the next start"
                    );
                    "kept"
                }
            };
            Metrics::count(&metrics.journal_replayed, result);
        });
    }
    while replays.join_next().await.is_some() {}
}
