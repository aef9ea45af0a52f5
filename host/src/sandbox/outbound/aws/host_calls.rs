//! Calls the host makes itself with an activity's AWS credentials, not on a guest's behalf:
//! a large output's `PutObject` ([`crate::sandbox::large_output`]), the `[activity.config]`
//! secrets' `GetSecretValue` and `GetParameter` ([`crate::sandbox::guest_config`]). They go
//! out as a guest's signed calls do: to the endpoint override if one is set, through the
//! outbound client (its vetted connections and deadline), each tried again as
//! [`with_retries`] says.

use crate::sandbox::outbound::aws::endpoints::ServiceEndpoint;
use crate::sandbox::outbound::aws::{signing, AwsGrant};
use crate::sandbox::outbound::client::{self, SendPlan, SystemResolver};
use crate::sandbox::outbound::policy::Target;
use crate::sandbox::outbound::{OutboundLimits, RequestLog};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use std::sync::Arc;

/// The most of an answer's body a host call reads (S3's and the secret stores' answers are
/// far smaller: a secret is at most 64 KiB).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// One call the host makes with an activity's credentials.
pub struct HostCall<'a> {
    /// The service and region it calls (and the bucket, for S3).
    pub endpoint: ServiceEndpoint,
    /// Its method.
    pub method: &'static str,
    /// Its path and query, from `/`.
    pub path: &'a str,
    /// Its headers beyond the signature's.
    pub headers: &'a [(&'static str, &'a str)],
    /// Its body.
    pub body: Bytes,
    /// Whose it is, in the log.
    pub on_behalf_of: HostCallFor,
    /// When it must be done.
    pub deadline: tokio::time::Instant,
}

/// Whose a host call is, as its log line says.
pub struct HostCallFor {
    /// The activity.
    pub activity_arn: Arc<str>,
    /// The task's id, or what the host does (e.g. `config-refresh`).
    pub task_id: String,
}

impl AwsGrant {
    /// Makes `call` with the activity's credentials; `Ok` is the service's answer (any
    /// status), `Err` says why none came (never a credential).
    pub async fn call(&self, call: HostCall<'_>) -> Result<(http::StatusCode, Bytes), String> {
        let host = standard_host(&call.endpoint);
        let named = Target::new("https", &host)?;
        let route = self.send_route(call.endpoint, &named)?;
        let mut request = http::Request::builder()
            .method(call.method)
            .uri(format!("https://{host}{}", call.path));
        for (name, value) in call.headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(
                http_body_util::Full::new(call.body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|err| format!("the request to {host}{}: {err}", call.path))?;
        let request = signing::signed(&route, self.credentials(), u64::MAX, request, call.deadline)
            .await
            .map_err(|err| err.to_string())?;
        let plan = SendPlan {
            log: RequestLog::new(
                call.on_behalf_of.activity_arn,
                call.on_behalf_of.task_id,
                call.method,
                &route.send_to,
                Some(&route.endpoint.service),
                Arc::default(),
            ),
            target: route.send_to.clone(),
            allowlist: self.endpoint_allowlist(),
            limits: OutboundLimits::default(),
            options: None,
            resolver: Arc::new(SystemResolver),
            in_flight: Arc::new(tokio::sync::Semaphore::new(1)),
            deadline: call.deadline,
        };
        let service = &route.endpoint.service;
        let (response, _) = client::send(plan, request)
            .await
            .map_err(|err| format!("{service} did not answer: {err}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|err| format!("reading {service}'s answer: {err}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// Writes `body` as object `key` of `bucket`; the failure is S3's answer (retryable
    /// unless a 4xx) or why none came (retryable).
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: Bytes,
        on_behalf_of: HostCallFor,
        deadline: tokio::time::Instant,
    ) -> Result<(), Failed> {
        let endpoint = ServiceEndpoint {
            service: "s3".into(),
            region: self.region().map(str::to_string),
            bucket: Some(bucket.to_string()),
        };
        let path = format!("/{key}");
        let (status, answer) = self
            .call(HostCall {
                endpoint,
                method: "PUT",
                path: &path,
                headers: &[("content-type", content_type)],
                body,
                on_behalf_of,
                deadline,
            })
            .await
            .map_err(Failed::retryable)?;
        if status.is_success() {
            return Ok(());
        }
        let excerpt: String = String::from_utf8_lossy(&answer).chars().take(300).collect();
        Err(Failed {
            why: format!("S3 answered {status}: {excerpt}"),
            retryable: !status.is_client_error(),
        })
    }
}

/// Attempts of one host call at most.
const ATTEMPTS: u32 = 3;

/// Why one attempt of a host call failed, and whether another may succeed.
#[derive(Debug)]
pub struct Failed {
    /// The service's answer, or why none came (for the log and the task's cause).
    pub why: String,
    /// Whether trying again may help (a 5xx, throttling, no answer).
    pub retryable: bool,
}

impl Failed {
    /// A failure worth another attempt.
    pub fn retryable(why: String) -> Failed {
        Failed {
            why,
            retryable: true,
        }
    }
}

/// Runs `attempt` (given its deadline, `attempt_time` from its start) until it succeeds, fails
/// for good, or has failed [`ATTEMPTS`] times, 200 ms and then 800 ms apart; `Err` is the last
/// failure's reason.
pub async fn with_retries<T, Fut>(
    attempt_time: std::time::Duration,
    mut attempt: impl FnMut(tokio::time::Instant) -> Fut,
) -> Result<T, String>
where
    Fut: std::future::Future<Output = Result<T, Failed>>,
{
    let mut made = 1;
    loop {
        match attempt(tokio::time::Instant::now() + attempt_time).await {
            Ok(value) => return Ok(value),
            Err(failed) if failed.retryable && made < ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(200 * 4u64.pow(made - 1)))
                    .await;
                made += 1;
            }
            Err(failed) => return Err(failed.why),
        }
    }
}

/// The standard name of `endpoint` (what the request is signed for when no override is set).
fn standard_host(endpoint: &ServiceEndpoint) -> String {
    match (&endpoint.bucket, &endpoint.region) {
        (Some(bucket), _) => format!("{bucket}.s3.{}.amazonaws.com", endpoint.signing_region()),
        (None, Some(region)) => format!("{}.{region}.amazonaws.com", endpoint.service),
        (None, None) => format!("{}.amazonaws.com", endpoint.service),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `with_retries` over failures `retryable[0]`, `retryable[1]`...: its result and
    /// the attempts made.
    async fn attempts(retryable: &[bool]) -> (Result<(), String>, usize) {
        let made = std::cell::Cell::new(0);
        let result = with_retries(Duration::from_secs(1), |_| {
            let n = made.get();
            made.set(n + 1);
            let failed = Failed {
                why: format!("failure {n}"),
                retryable: retryable[n],
            };
            async move { Err::<(), _>(failed) }
        })
        .await;
        (result, made.get())
    }

    #[tokio::test]
    async fn retryable_failures_are_tried_three_times_and_others_once() {
        let started = std::time::Instant::now();
        assert_eq!(
            attempts(&[true, true, true]).await,
            (Err("failure 2".into()), 3)
        );
        // 200 ms and 800 ms between the attempts, none after the last. Real time (the
        // crate's tokio has no `test-util`, so no paused clock): a sleep never ends early, so
        // 1 s is a strict floor; the ceiling leaves 2.5 s for a loaded machine's late timer
        // wake-ups and stays under the 4.2 s that one more wait (the next delay, 3.2 s) after
        // the last attempt would make.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1000) && waited < Duration::from_millis(3500),
            "{waited:?}"
        );
        assert_eq!(attempts(&[false]).await, (Err("failure 0".into()), 1));
        assert_eq!(attempts(&[true, false]).await, (Err("failure 1".into()), 2));
    }
}
