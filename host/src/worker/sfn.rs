//! The Step Functions activity API, through aws-sdk-sfn: long polls with their own long
//! timeout, reports and heartbeats with short ones, and errors sorted by what the worker
//! should do about them.

use crate::config::{ActivityConfig, WorkerSection};
use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::time::Duration;

/// Client-side limit on one GetActivityTask attempt: the service holds a poll up to 60 s.
pub const POLL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(70);
/// Client-side limit on one report or heartbeat attempt.
pub const REPORT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts the SDK makes per call (standard retry mode: backoff, retry quota).
pub const SDK_MAX_ATTEMPTS: u32 = 3;

/// A task handed out by GetActivityTask. Its `Debug` shows the [`task_id`], never the
/// token: the token is a credential to report on the task.
#[derive(Clone)]
pub struct ActivityTask {
    /// The token that reports on the task; never shown to guests.
    pub token: String,
    /// The task's JSON input.
    pub input: String,
}

impl std::fmt::Debug for ActivityTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityTask")
            .field("task_id", &self.task_id())
            .field("token", &"<redacted>")
            .field("input_bytes", &self.input.len())
            .finish()
    }
}

impl ActivityTask {
    /// A short id for the task, for logs and the guest's context (see [`task_id`]).
    pub fn task_id(&self) -> String {
        task_id(&self.token)
    }
}

/// A short id for a task token: the first 16 hex digits of its SHA-256. It identifies the
/// task in logs but cannot be used to report on it.
pub fn task_id(task_token: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let digest = Sha256::digest(task_token.as_bytes());
    digest[..8]
        .iter()
        .fold(String::with_capacity(16), |mut id, byte| {
            let _ = write!(id, "{byte:02x}");
            id
        })
}

/// A failed Step Functions call, sorted by what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// `ActivityDoesNotExist` or `InvalidArn`: stop polling that activity.
    ActivityGone(String),
    /// `TaskTimedOut` or `TaskDoesNotExist`: the task is over; holds the error code.
    TaskGone(String),
    /// `InvalidToken`: ambiguous (LocalStack's answer to heartbeats without HeartbeatSeconds,
    /// and to finished tasks).
    InvalidToken(String),
    /// Throttling, worker limit, 5xx, timeouts, network errors, answers without an error
    /// code that could be read (garbled, unexpected status): retry with backoff.
    Retryable(String),
    /// Any other rejection the service names (access denied, validation...): retrying will
    /// not help soon.
    Rejected(String),
}

impl ApiError {
    /// The kind of error, as a metric label: `activity_gone`, `task_gone`, `invalid_token`,
    /// `retryable` or `rejected`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::ActivityGone(_) => "activity_gone",
            ApiError::TaskGone(_) => "task_gone",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::Retryable(_) => "retryable",
            ApiError::Rejected(_) => "rejected",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::ActivityGone(m)
            | ApiError::TaskGone(m)
            | ApiError::InvalidToken(m)
            | ApiError::Retryable(m)
            | ApiError::Rejected(m) => f.write_str(m),
        }
    }
}

fn classify<E, R>(err: SdkError<E, R>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = err.raw_response().map(|response| response.status_code());
    let code = err.code().map(str::to_string);
    let message = DisplayErrorContext(&err).to_string();
    match code.as_deref() {
        Some("ActivityDoesNotExist" | "InvalidArn") => ApiError::ActivityGone(message),
        Some(code @ ("TaskTimedOut" | "TaskDoesNotExist")) => ApiError::TaskGone(code.to_string()),
        Some("InvalidToken") => ApiError::InvalidToken(message),
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "ActivityWorkerLimitExceeded"
            | "RequestLimitExceeded"
            | "ServiceUnavailable"
            | "InternalFailure"
            | "KmsThrottlingException",
        ) => ApiError::Retryable(message),
        _ if status.is_none_or(|status| status >= 500) => ApiError::Retryable(message),
        // No error code: not an answer of the service that could be understood (a proxy's
        // page, a garbled body, an unexpected status). Final only once the service says so.
        None => ApiError::Retryable(message),
        _ => ApiError::Rejected(message),
    }
}

/// Lets [`classify`] read the HTTP status of the SDK's raw response.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_sfn::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Step Functions clients: one tuned for long polls, one for reports and heartbeats.
#[derive(Clone, Debug)]
pub struct SfnClient {
    poll: aws_sdk_sfn::Client,
    report: aws_sdk_sfn::Client,
}

/// Loads the standard AWS configuration (credential chain, region, `AWS_ENDPOINT_URL`),
/// with `[worker]`'s region and endpoint_url taking precedence.
pub async fn load_sdk_config(worker: &WorkerSection) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &worker.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &worker.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// Builds each activity's clients: the worker's own, or ones assuming the activity's
/// `role_arn` (used at start-up and by reloads that add an activity or change its role).
#[derive(Clone, Debug)]
pub struct ActivityClients {
    sdk: SdkConfig,
    own: SfnClient,
}

impl ActivityClients {
    /// Clients from `sdk` (the worker's own credentials).
    pub fn new(sdk: SdkConfig) -> ActivityClients {
        ActivityClients {
            own: SfnClient::new(&sdk),
            sdk,
        }
    }

    /// The worker's own clients.
    pub fn own(&self) -> SfnClient {
        self.own.clone()
    }

    /// The clients `activity` calls Step Functions with.
    pub async fn for_activity(&self, activity: &ActivityConfig) -> SfnClient {
        match &activity.role_arn {
            Some(role) => {
                SfnClient::assuming_role(
                    &self.sdk,
                    role,
                    activity.external_id.as_deref(),
                    "sfn-wasm-worker",
                )
                .await
            }
            None => self.own(),
        }
    }
}

impl SfnClient {
    /// Clients built from `sdk` with the worker's timeouts and standard retries.
    pub fn new(sdk: &SdkConfig) -> SfnClient {
        let client = |attempt: Duration, operation: Duration| {
            let config = aws_sdk_sfn::config::Builder::from(sdk)
                .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(5))
                        .operation_attempt_timeout(attempt)
                        .operation_timeout(operation)
                        .build(),
                )
                .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
                .build();
            aws_sdk_sfn::Client::from_conf(config)
        };
        SfnClient {
            poll: client(
                POLL_ATTEMPT_TIMEOUT,
                POLL_ATTEMPT_TIMEOUT * SDK_MAX_ATTEMPTS,
            ),
            report: client(
                REPORT_ATTEMPT_TIMEOUT,
                REPORT_ATTEMPT_TIMEOUT * SDK_MAX_ATTEMPTS,
            ),
        }
    }

    /// Clients for an activity in another account: their credentials come from STS
    /// AssumeRole of `role_arn` (with `external_id` if given) on top of `sdk`'s own, and are
    /// refreshed before they expire. `session_name` names the session in the tenant's
    /// CloudTrail.
    pub async fn assuming_role(
        sdk: &SdkConfig,
        role_arn: &str,
        external_id: Option<&str>,
        session_name: &str,
    ) -> SfnClient {
        let mut role = aws_config::sts::AssumeRoleProvider::builder(role_arn)
            .session_name(session_name)
            .configure(sdk);
        if let Some(external_id) = external_id {
            role = role.external_id(external_id);
        }
        let credentials = aws_sdk_sfn::config::SharedCredentialsProvider::new(role.build().await);
        let sdk = sdk.to_builder().credentials_provider(credentials).build();
        SfnClient::new(&sdk)
    }

    /// One long poll. `Ok(None)` is the service's "no task" (no token, or an empty one).
    pub async fn poll(
        &self,
        activity_arn: &str,
        worker_name: &str,
    ) -> Result<Option<ActivityTask>, ApiError> {
        let response = self
            .poll
            .get_activity_task()
            .activity_arn(activity_arn)
            .worker_name(worker_name)
            .send()
            .await
            .map_err(classify)?;
        Ok(match response.task_token {
            Some(token) if !token.is_empty() => Some(ActivityTask {
                token,
                input: response.input.unwrap_or_else(|| "{}".to_string()),
            }),
            _ => None,
        })
    }

    /// SendTaskSuccess.
    pub async fn send_success(&self, token: &str, output: &str) -> Result<(), ApiError> {
        self.report
            .send_task_success()
            .task_token(token)
            .output(output)
            .send()
            .await
            .map(drop)
            .map_err(classify)
    }

    /// SendTaskFailure.
    pub async fn send_failure(
        &self,
        token: &str,
        error: &str,
        cause: &str,
    ) -> Result<(), ApiError> {
        self.report
            .send_task_failure()
            .task_token(token)
            .error(error)
            .cause(cause)
            .send()
            .await
            .map(drop)
            .map_err(classify)
    }

    /// SendTaskHeartbeat.
    pub async fn send_heartbeat(&self, token: &str) -> Result<(), ApiError> {
        self.report
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
            .map(drop)
            .map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_formatted_for_a_log_shows_no_token() {
        let token = "AAAAKgAAAAIAAAAAAAAAAX0secret-task-token-7f3a";
        let task = ActivityTask {
            token: token.to_string(),
            input: r#"{"order":1}"#.to_string(),
        };
        for text in [format!("{task:?}"), format!("{task:#?}")] {
            assert!(!text.contains(token), "{text}");
            assert!(!text.contains("secret-task-token"), "{text}");
            assert!(text.contains(&task_id(token)), "{text}");
        }
    }
}
