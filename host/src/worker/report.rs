//! Reporting a task's outcome: SendTaskSuccess or SendTaskFailure, retried through
//! throttling, 5xx and network errors until [`REPORT_DEADLINE`].

use crate::sandbox::Outcome;
use crate::worker::backoff::Backoff;
use crate::worker::metrics::Metrics;
use crate::worker::sfn::{ApiError, SfnClient};
use std::time::{Duration, Instant};

/// Backoff between report attempts.
const REPORT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// How long the worker keeps retrying a report before giving up (and logging it).
pub const REPORT_DEADLINE: Duration = Duration::from_secs(120);

/// Why a report did not land.
pub(crate) enum ReportError {
    /// Step Functions refused it because the task is over (holds the error code or message).
    TaskGone(String),
    /// It could not be delivered within [`REPORT_DEADLINE`], or was rejected.
    Undelivered(String),
}

/// Sends `outcome` for the task of `token`.
pub(crate) async fn report(
    client: &SfnClient,
    metrics: &Metrics,
    token: &str,
    outcome: &Outcome,
) -> Result<(), ReportError> {
    let deadline = Instant::now() + REPORT_DEADLINE;
    let mut backoff = Backoff::new(REPORT_BACKOFF.0, REPORT_BACKOFF.1);
    loop {
        let (operation, sent) = match outcome {
            Outcome::Succeeded { output } => {
                ("SendTaskSuccess", client.send_success(token, output).await)
            }
            Outcome::Failed { error, cause } => (
                "SendTaskFailure",
                client.send_failure(token, error, cause).await,
            ),
        };
        metrics.api_call(operation, sent.as_ref().err().map(ApiError::kind));
        match sent {
            Ok(()) => return Ok(()),
            Err(ApiError::TaskGone(code)) => return Err(ReportError::TaskGone(code)),
            Err(ApiError::InvalidToken(message)) => return Err(ReportError::TaskGone(message)),
            Err(ApiError::Retryable(message)) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return Err(ReportError::Undelivered(format!(
                        "gave up after {} attempts: {message}",
                        backoff.attempts()
                    )));
                }
                tracing::debug!(error = %message, ?delay, "report failed; retrying");
                Metrics::count(&metrics.reports, "retried");
                tokio::time::sleep(delay).await;
            }
            Err(ApiError::Rejected(message) | ApiError::ActivityGone(message)) => {
                return Err(ReportError::Undelivered(message))
            }
        }
    }
}
