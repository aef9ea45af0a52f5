//! Heartbeating one task: on the activity's interval (a ticker that lives as long as the
//! task) and when its guest asks (rate-limited). An answer that says the task is closed
//! interrupts the guest, so that its slot frees up for work someone will accept.

use crate::sandbox::host_api::{BeatFuture, Heartbeat, Interrupt, InterruptReason};
use crate::worker::metrics::Metrics;
use crate::worker::sfn::{ApiError, SfnClient};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument as _;

/// The least time between two heartbeats the guest asks for; calls in between return at once.
pub const GUEST_HEARTBEAT_MIN_GAP: Duration = Duration::from_secs(1);

/// The heartbeat of one task.
pub(crate) struct TaskHeartbeat {
    client: SfnClient,
    token: String,
    interrupt: Interrupt,
    metrics: Arc<Metrics>,
    last_sent: Mutex<Option<Instant>>,
    /// Set by the first heartbeat Step Functions accepted: from then on `InvalidToken`
    /// means the task was closed (a timeout, a stopped execution), not "no HeartbeatSeconds".
    accepted_once: AtomicBool,
    /// The error kinds already logged for this task: each is logged once, not once per tick.
    logged: Mutex<HashSet<&'static str>>,
}

impl TaskHeartbeat {
    /// The heartbeat of the task of `token`, interrupting `interrupt` when the task is over.
    pub(crate) fn new(
        client: SfnClient,
        token: String,
        interrupt: Interrupt,
        metrics: Arc<Metrics>,
    ) -> TaskHeartbeat {
        TaskHeartbeat {
            client,
            token,
            interrupt,
            metrics,
            last_sent: Mutex::new(None),
            accepted_once: AtomicBool::new(false),
            logged: Mutex::default(),
        }
    }

    /// Heartbeats every `interval` until the returned handle is dropped or the task is over.
    /// A tick that comes late is delayed, not followed by a burst.
    pub(crate) fn start_ticker(self: &Arc<Self>, interval: Duration) -> AbortOnDropHandle<()> {
        let heartbeat = self.clone();
        let ticker = async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if heartbeat.send().await.is_err() {
                    return;
                }
            }
        };
        AbortOnDropHandle::new(tokio::spawn(ticker.in_current_span()))
    }

    /// Sends SendTaskHeartbeat now. `Err` once the task is known to be over; the guest is
    /// then interrupted.
    async fn send(&self) -> Result<(), String> {
        *self.last_sent.lock().unwrap() = Some(Instant::now());
        let sent = self.client.send_heartbeat(&self.token).await;
        self.metrics
            .api_call("SendTaskHeartbeat", sent.as_ref().err().map(ApiError::kind));
        let error = match sent {
            Ok(()) => {
                Metrics::count(&self.metrics.heartbeats, "sent");
                self.accepted_once.store(true, Ordering::Relaxed);
                return Ok(());
            }
            Err(error) => error,
        };
        Metrics::count(&self.metrics.heartbeats, "failed");
        match error {
            ApiError::TaskGone(code) => {
                self.task_is_over(format!("{code} on SendTaskHeartbeat"));
                Err(format!("the task is over ({code})"))
            }
            ApiError::InvalidToken(message) if self.accepted_once.load(Ordering::Relaxed) => {
                // The same token was accepted before: the task has been closed since.
                self.task_is_over(format!(
                    "InvalidToken on SendTaskHeartbeat after an accepted heartbeat: {message}"
                ));
                Err("the task is over (InvalidToken)".to_string())
            }
            ApiError::InvalidToken(message) => {
                // LocalStack answers this for states without HeartbeatSeconds, before any
                // heartbeat was accepted: no proof the task is gone; the report will tell.
                if self.first_time("InvalidToken") {
                    tracing::info!(
                        error = %message,
                        "heartbeat got InvalidToken before any was accepted (a state without \
                         HeartbeatSeconds?); the guest continues (logged once per task)"
                    );
                }
                Ok(())
            }
            other => {
                let kind = match other {
                    ApiError::Retryable(_) => "retryable",
                    _ => "rejected",
                };
                if self.first_time(kind) {
                    tracing::warn!(
                        error = %other,
                        "heartbeat failed; the guest continues (logged once per task and kind)"
                    );
                }
                Ok(())
            }
        }
    }

    /// Stops the guest and says why, once.
    fn task_is_over(&self, why: String) {
        if self.first_time("over") {
            tracing::warn!(reason = %why, "the task is closed; stopping its guest, nothing will be reported");
        }
        self.interrupt.trigger(InterruptReason::TaskGone(why));
    }

    /// Whether `kind` is logged for the first time in this task.
    fn first_time(&self, kind: &'static str) -> bool {
        self.logged.lock().unwrap().insert(kind)
    }
}

impl Heartbeat for TaskHeartbeat {
    fn beat(&self) -> BeatFuture<'_> {
        // An interrupted task never gets here: the `heartbeat` host function answers first.
        Box::pin(async move {
            let recent = self
                .last_sent
                .lock()
                .unwrap()
                .is_some_and(|at| at.elapsed() < GUEST_HEARTBEAT_MIN_GAP);
            if recent {
                return Ok(());
            }
            self.send().await
        })
    }
}
