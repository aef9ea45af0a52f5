//! One poller: take a free slot of the activity, long-poll GetActivityTask, hand the task
//! to its own tokio task (which keeps the slot until its guest has ended), repeat.

use crate::worker::activity::{Activity, Shared};
use crate::worker::backoff::Backoff;
use crate::worker::metrics::activity_label;
use crate::worker::sfn::{ActivityTask, ApiError};
use crate::worker::slots::TaskSlot;
use crate::worker::task;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Backoff after a failed poll: first retry within 0.1–0.2 s, at most 30 s apart.
const POLL_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));

/// How long a poll must stay open without an error for its activity to count as polling
/// (readiness) before any poll is answered: Step Functions refuses an unknown activity or a
/// bad credential at once, and an idle activity's poll is held for up to 60 s.
const POLL_HELD_OPEN: Duration = Duration::from_secs(1);

/// Polls for `activity` until `stop` (shutdown, the activity removed or this poller retired
/// by a reload), or until Step Functions says the activity does not exist. A poll in flight
/// is not aborted by `stop` (a task it brings must run, not be lost until its timeout); only
/// [`crate::worker::Worker::hurry`] abandons it. Each task runs with the activity's spec of
/// the moment it arrived.
pub(crate) async fn poll_loop(
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = &activity.slots;
    let mut backoff = Backoff::new(POLL_BACKOFF.0, POLL_BACKOFF.1);
    let label = activity_label(&activity.arn);
    let free_slots = shared.metrics.free_slots.get_or_create_owned(&label);
    let open_polls = shared.metrics.open_polls.get_or_create_owned(&label);
    loop {
        if stop.is_cancelled() || activity.stopped.load(Ordering::SeqCst) {
            return;
        }
        let slot = tokio::select! {
            slot = TaskSlot::acquire(slots, &free_slots) => slot,
            _ = stop.cancelled() => return,
        };
        let polled = poll_once(&shared, &activity, &open_polls).await;
        let Some(polled) = polled else {
            return; // abandoned: the worker is stopping at once
        };
        shared
            .metrics
            .api_call("GetActivityTask", polled.as_ref().err().map(ApiError::kind));
        match polled {
            Ok(received) => {
                activity.polling.store(true, Ordering::Relaxed);
                if backoff.attempts() > 0 {
                    tracing::info!(activity = %activity.arn, failed_polls = backoff.attempts(), "polling recovered");
                    backoff.reset();
                }
                match received {
                    Some(received) => {
                        let (shared, activity, spec) =
                            (shared.clone(), activity.clone(), activity.spec());
                        tasks.spawn(async move {
                            task::run_task(&shared, &activity.arn, &spec, received, slot).await;
                        });
                    }
                    None => {
                        shared.metrics.empty_polls.inc(&label);
                        drop(slot);
                    }
                }
            }
            Err(ApiError::ActivityGone(message)) => {
                if !activity.stopped.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        activity = %activity.arn,
                        error = %message,
                        "Step Functions does not know this activity; no longer polling it \
                         (create it, or fix its arn in the config)"
                    );
                }
                return;
            }
            Err(err) => {
                if matches!(err, ApiError::Rejected(_)) {
                    // Access denied, a bad credential...: not polling until a poll is accepted.
                    activity.polling.store(false, Ordering::Relaxed);
                }
                drop(slot);
                let delay = backoff.next_delay();
                log_poll_error(&activity.arn, &err, backoff.attempts(), delay);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// One long poll of `activity` (counted in `open_polls` while open); it counts as polling
/// once the poll has stayed open [`POLL_HELD_OPEN`] without an error. `None` when the worker
/// is hurried (the poll is abandoned).
async fn poll_once(
    shared: &Shared,
    activity: &Activity,
    open_polls: &Gauge,
) -> Option<Result<Option<ActivityTask>, ApiError>> {
    open_polls.inc();
    let client = activity.spec().client.clone();
    let poll = client.poll(&activity.arn, &shared.worker_name);
    tokio::pin!(poll);
    let held_open = tokio::time::sleep(POLL_HELD_OPEN);
    tokio::pin!(held_open);
    let polled = loop {
        tokio::select! {
            polled = &mut poll => break Some(polled),
            _ = &mut held_open, if !activity.polling.load(Ordering::Relaxed) => {
                activity.polling.store(true, Ordering::Relaxed);
            }
            _ = shared.hurry.cancelled() => break None,
        }
    };
    open_polls.dec();
    polled
}

/// Logs a failed poll: a warning for the first of a streak, then at debug level.
fn log_poll_error(activity: &str, err: &ApiError, attempts: u32, delay: Duration) {
    if attempts == 1 {
        tracing::warn!(
            activity = %activity,
            error = %err,
            "GetActivityTask failed; retrying with backoff (logged once per streak)"
        );
    } else {
        tracing::debug!(activity = %activity, error = %err, ?delay, "GetActivityTask failed again");
    }
}
