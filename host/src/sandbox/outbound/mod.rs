//! Outbound HTTP for guests (`wasi:http/outgoing-handler`), deny by default: a request goes
//! out only to an origin in its activity's `[activity.outbound] allowed_hosts`, never to the worker's
//! own credential endpoints, within the activity's limits; every other gets the standard
//! error code (`HTTP-request-denied`, `destination-IP-prohibited`, ...) that the guest can
//! handle, and a `warn` line saying which config key would allow it.
//!
//! - [`capability`]: the `[activity.outbound]` settings, the grant and the linking;
//! - [`policy`]: the allowlist and the protected addresses;
//! - [`client`]: resolving, vetting, connecting and sending one admitted request.

pub mod aws;
pub mod capability;
pub mod client;
pub mod policy;

pub use capability::{Outbound, OutboundSettings, OutboundUsage};

use crate::sandbox::outbound::aws::{AwsGrant, AwsRoute};
use crate::sandbox::outbound::client::{Resolver, SendPlan, SendResult, SystemResolver};
use crate::sandbox::outbound::policy::{Allowlist, Target, TargetHost};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi_http::p2::bindings::http::outgoing_handler;
use wasmtime_wasi_http::p2::bindings::http::types::{self, ErrorCode};
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::p2::HttpResult;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
};

/// The limits on an activity's outbound requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Time to get a connection (resolving, connecting, a free in-flight slot).
    pub connect_timeout: Duration,
    /// Time from sending the request to the response's first byte.
    pub first_byte_timeout: Duration,
    /// Time for the whole request, body included; never past the task's deadline.
    pub request_timeout: Duration,
    /// Bytes of a response body a guest may read.
    pub max_response_bytes: u64,
    /// Requests one task may send.
    pub max_requests_per_task: u32,
    /// Requests of all the activity's tasks in flight at once.
    pub max_in_flight: u32,
}

impl Default for OutboundLimits {
    fn default() -> OutboundLimits {
        OutboundLimits {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_response_bytes: 10 << 20,
            max_requests_per_task: 100,
            max_in_flight: 64,
        }
    }
}

/// What an activity grants its guests to call: shared by all its tasks (the in-flight bound
/// is per activity).
#[derive(Clone)]
pub struct OutboundGrant {
    allowlist: Arc<Allowlist>,
    limits: OutboundLimits,
    resolver: Arc<dyn Resolver>,
    in_flight: Arc<Semaphore>,
}

impl OutboundGrant {
    /// A grant of `allowlist` within `limits`, resolving names with the system's resolver.
    pub fn new(allowlist: Allowlist, limits: OutboundLimits) -> OutboundGrant {
        OutboundGrant {
            allowlist: Arc::new(allowlist),
            limits,
            resolver: Arc::new(SystemResolver),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
        }
    }

    /// The same grant resolving names with `resolver`.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> OutboundGrant {
        self.resolver = resolver;
        self
    }
}

impl Default for OutboundGrant {
    /// Nothing allowed.
    fn default() -> OutboundGrant {
        OutboundGrant::new(Allowlist::default(), OutboundLimits::default())
    }
}

impl fmt::Debug for OutboundGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundGrant")
            .field("allowlist", &self.allowlist)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// One task's side of outbound HTTP: admits or denies each request the guest sends, and
/// records how each ended.
pub struct OutboundHooks {
    grant: Arc<OutboundGrant>,
    /// What the activity's guests may call of AWS, signed by the host.
    aws: Option<Arc<AwsGrant>>,
    /// How each request of the task ended, as its status class (`2xx`...), `error` or `denied`.
    results: Arc<std::sync::Mutex<Vec<RequestResult>>>,
    activity_arn: Arc<str>,
    task_id: String,
    task_deadline: Instant,
    /// Requests admitted so far: the per-task limit counts them.
    admitted: u32,
    /// The target `handle` just admitted, for the `send_request` that follows it, and its
    /// AWS route if it is a call the host signs.
    admitted_target: Option<(Target, Option<AwsRoute>)>,
}

impl OutboundHooks {
    /// The hooks of one task of the activity `activity_arn`, which must end by `task_deadline`.
    pub fn new(
        grant: Arc<OutboundGrant>,
        aws: Option<Arc<AwsGrant>>,
        activity_arn: Arc<str>,
        task_id: String,
        task_deadline: std::time::Instant,
    ) -> OutboundHooks {
        OutboundHooks {
            grant,
            aws,
            results: Arc::default(),
            activity_arn,
            task_id,
            task_deadline: task_deadline.into(),
            admitted: 0,
            admitted_target: None,
        }
    }

    /// How the task's requests ended (a handle: read it after the store is dropped).
    pub fn usage(&self) -> OutboundUsage {
        OutboundUsage(self.results.clone())
    }

    /// Admits a request to `scheme://authority` with these headers (keeping its target for
    /// the `send_request` that follows), or says why not (with a `warn` line) as the
    /// wasi:http error code the guest gets from `handle`.
    fn admit(
        &mut self,
        scheme: &str,
        authority: &str,
        headers: &http::HeaderMap,
    ) -> Result<(), ErrorCode> {
        let target = match Target::new(scheme, authority) {
            Ok(target) => target,
            Err(why) => return Err(self.deny(authority, &why, ErrorCode::HttpRequestUriInvalid)),
        };
        let host_header = headers.get(http::header::HOST);
        if host_header.is_some_and(|host| host.as_bytes() != authority.as_bytes()) {
            return Err(self.deny(
                authority,
                "its host header differs from the URL's authority",
                ErrorCode::HttpRequestDenied,
            ));
        }
        let route = match self.aws_route(&target) {
            Some(Ok(route)) => Some(route),
            Some(Err(why)) if !self.grant.allowlist.admits(&target) => {
                return Err(self.deny(&target.to_string(), &why, ErrorCode::HttpRequestDenied));
            }
            _ => None,
        };
        if route.is_none() && !self.grant.allowlist.admits(&target) {
            let why = format!(
                "it is not in the activity's [activity.outbound] allowed_hosts; add \"{target}\" to allow it"
            );
            return Err(self.deny(&target.to_string(), &why, ErrorCode::HttpRequestDenied));
        }
        let limit = self.grant.limits.max_requests_per_task;
        if self.admitted >= limit {
            let why = format!(
                "the task already sent {limit} requests (the activity's [activity.outbound] max_requests_per_task)"
            );
            return Err(self.deny(&target.to_string(), &why, ErrorCode::HttpRequestDenied));
        }
        self.admitted += 1;
        self.admitted_target = Some((target, route));
        Ok(())
    }

    /// The AWS route of a request to `target`: `None` when it is not an AWS endpoint name
    /// or the activity grants no AWS service (an ordinary request then); `Err` says why the
    /// activity does not let its guests call it.
    fn aws_route(&self, target: &Target) -> Option<Result<AwsRoute, String>> {
        let aws = self.aws.as_ref()?;
        let TargetHost::Name(name) = &target.host else {
            return None;
        };
        let endpoint = aws::endpoints::recognise(name)?;
        Some(aws.route(endpoint, target))
    }

    fn deny(&mut self, authority: &str, why: &str, error: ErrorCode) -> ErrorCode {
        // Never a userinfo (`user:pass@`) a guest wrote into the URL.
        let authority = authority.rsplit('@').next().unwrap_or_default();
        self.results.lock().unwrap().push(RequestResult {
            status: "denied",
            aws_service: None,
            origin: authority.to_string(),
            code: None,
            started: std::time::SystemTime::now(),
            duration: std::time::Duration::ZERO,
        });
        tracing::warn!(
            activity = %self.activity_arn,
            task_id = %self.task_id,
            authority,
            "outbound request denied: {why}"
        );
        error
    }

    /// How to send `request`, which [`OutboundHooks::admit`] let through just before (the
    /// guarded `handle` is the only way a request reaches here; anything else is denied).
    fn plan(
        &mut self,
        request: &http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(SendPlan, Option<AwsRoute>), Error> {
        let (target, route) = self
            .admitted_target
            .take()
            .ok_or(Error::HttpRequestDenied)?;
        let limits = self.grant.limits;
        let (target, allowlist) = match &route {
            Some(route) => (
                route.send_to.clone(),
                self.aws
                    .as_ref()
                    .map_or_else(Default::default, |aws| aws.endpoint_allowlist()),
            ),
            None => (target, self.grant.allowlist.clone()),
        };
        let plan = SendPlan {
            log: RequestLog::new(
                self.activity_arn.clone(),
                self.task_id.clone(),
                request.method().as_str(),
                &target,
                route.as_ref().map(|route| route.endpoint.service.as_str()),
                self.results.clone(),
            ),
            target,
            allowlist,
            limits,
            options,
            resolver: self.grant.resolver.clone(),
            in_flight: self.grant.in_flight.clone(),
            deadline: (Instant::now() + limits.request_timeout).min(self.task_deadline),
        };
        Ok((plan, route))
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_body_result: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        match self.plan(&request, options) {
            Ok((plan, None)) => Box::new(client::send(plan, request)),
            Ok((mut plan, Some(route))) => {
                let aws = self
                    .aws
                    .clone()
                    .expect("an AWS route comes from the AWS grant");
                Box::new(async move {
                    let deadline = plan.deadline;
                    let signing = aws::signing::signed(
                        &route,
                        aws.credentials(),
                        aws.max_request_bytes(),
                        request,
                        deadline,
                    );
                    let signed = match tokio::time::timeout_at(deadline, signing).await {
                        Ok(signed) => signed,
                        Err(_) => Err(Error::HttpResponseTimeout),
                    };
                    match signed {
                        Ok(request) => client::send(plan, request).await,
                        Err(error) => {
                            plan.log.failed(&error);
                            Err(error)
                        }
                    }
                })
            }
            Err(error) => Box::new(async move { Err(error) }),
        }
    }
}

/// One task's wasi:http state, for the guarded `wasi:http/outgoing-handler#handle` guests
/// import: it admits or denies a request in `handle` itself (so the guest gets the error
/// code from the call it made), then hands it to the standard implementation, which sends
/// it through [`OutboundHooks`].
pub struct GuardedView<'a> {
    /// The task's wasi:http context.
    pub ctx: &'a mut WasiHttpCtx,
    /// The task's resource table.
    pub table: &'a mut ResourceTable,
    /// The task's outbound hooks.
    pub hooks: &'a mut OutboundHooks,
}

impl GuardedView<'_> {
    /// `wasi:http/outgoing-handler#handle`.
    pub fn handle(
        &mut self,
        request: Resource<HostOutgoingRequest>,
        options: Option<Resource<types::RequestOptions>>,
    ) -> HttpResult<Resource<HostFutureIncomingResponse>> {
        let outgoing = self.table.get(&request)?;
        let scheme = match &outgoing.scheme {
            Some(types::Scheme::Http) => "http",
            Some(types::Scheme::Https) | None => "https",
            Some(types::Scheme::Other(other)) => other.as_str(),
        };
        let authority = outgoing.authority.as_deref().unwrap_or_default();
        self.hooks.admit(scheme, authority, &outgoing.headers)?;
        let mut standard = WasiHttpCtxView {
            ctx: &mut *self.ctx,
            table: &mut *self.table,
            hooks: &mut *self.hooks,
        };
        outgoing_handler::Host::handle(&mut standard, request, options)
    }
}

/// The `debug` line of one outbound request, written when the request ends (its response
/// body done or dropped, or its failure).
pub struct RequestLog {
    activity_arn: Arc<str>,
    task_id: String,
    method: String,
    target: String,
    started: std::time::Instant,
    started_at: std::time::SystemTime,
    /// The response status, once known.
    pub status: Option<u16>,
    /// Response body bytes received so far.
    pub bytes: u64,
    error: Option<String>,
    /// The AWS service of a request the host signed.
    aws_service: Option<Arc<str>>,
    results: Arc<std::sync::Mutex<Vec<RequestResult>>>,
}

/// How one request of a task ended: `2xx`, `3xx`, `4xx`, `5xx` (the response's status
/// class), `error` (no response) or `denied`, and the AWS service of a signed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestResult {
    /// How it ended.
    pub status: &'static str,
    /// The AWS service it called, if the host signed it.
    pub aws_service: Option<Arc<str>>,
    /// Where it went: `scheme://host:port`, never a path, header or body.
    pub origin: String,
    /// The response's status code, if one came.
    pub code: Option<u16>,
    /// When it started.
    pub started: std::time::SystemTime,
    /// How long it took, to the end of its response body (zero if it was denied).
    pub duration: std::time::Duration,
}

impl RequestLog {
    /// The log of a request of task `task_id` of `activity_arn` to `target` (a call to the
    /// AWS service `aws_service` if the host signs it), recorded in `results` when it ends.
    pub(crate) fn new(
        activity_arn: Arc<str>,
        task_id: String,
        method: &str,
        target: &Target,
        aws_service: Option<&str>,
        results: Arc<std::sync::Mutex<Vec<RequestResult>>>,
    ) -> RequestLog {
        RequestLog {
            activity_arn,
            task_id,
            method: method.to_string(),
            target: target.to_string(),
            started: std::time::Instant::now(),
            started_at: std::time::SystemTime::now(),
            status: None,
            bytes: 0,
            error: None,
            aws_service: aws_service.map(Into::into),
            results,
        }
    }

    /// Records why the request failed.
    pub fn failed(&mut self, error: &Error) {
        self.error = Some(error.to_string());
    }

    /// Logs (`warn`) that every address of the target is protected and not named by the
    /// allowlist.
    pub fn refused_address(&mut self, addresses: &[SocketAddr]) {
        let addresses: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
        tracing::warn!(
            activity = %self.activity_arn,
            task_id = %self.task_id,
            authority = %self.target,
            addresses = %addresses.join(","),
            "outbound request denied: the name resolves to a protected address (cloud metadata, \
             credentials or link-local); only an [activity.outbound] allowed_hosts entry naming that exact \
             IP reaches it"
        );
        self.error = Some("destination IP prohibited".into());
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let result = match self.status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(_) => "5xx",
            None => "error",
        };
        self.results.lock().unwrap().push(RequestResult {
            status: result,
            aws_service: self.aws_service.clone(),
            origin: self.target.clone(),
            code: self.status,
            started: self.started_at,
            duration: self.started.elapsed(),
        });
        tracing::debug!(
            activity = %self.activity_arn,
            task_id = %self.task_id,
            method = %self.method,
            authority = %self.target,
            aws_service = self.aws_service.as_deref(),
            status = self.status,
            bytes = self.bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1e3,
            error = self.error.as_deref(),
            "outbound request"
        );
    }
}
