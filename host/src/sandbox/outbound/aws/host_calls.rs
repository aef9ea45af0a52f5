//! Calls the host makes itself with an activity's AWS credentials, not on a guest's behalf:
//! a large output's `PutObject` ([`crate::sandbox::large_output`]), the `[activity.config]`
//! secrets' `GetSecretValue` and `GetParameter` ([`crate::sandbox::guest_config`]). They go
//! out as a guest's signed calls do: to the endpoint override if one is set, through the
//! outbound client (its vetted connections and deadline).

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
        let request = signing::signed(&route, self.credentials(), u64::MAX, request)
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

    /// Writes `body` as object `key` of `bucket`; `Err` is S3's answer or the failure.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        content_type: &str,
        body: Bytes,
        on_behalf_of: HostCallFor,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
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
            .await?;
        if status.is_success() {
            return Ok(());
        }
        let excerpt: String = String::from_utf8_lossy(&answer).chars().take(300).collect();
        Err(format!("S3 answered {status}: {excerpt}"))
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
