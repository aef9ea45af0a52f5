//! `[activity.outbound]`: the outbound HTTP capability's settings, its grant (the allowlist
//! and limits, one in-flight bound per activity) and its linking: `wasi:http/types` as
//! standard, `wasi:http/outgoing-handler` guarded by the grant; and its metric,
//! `outbound_requests_total{activity,status}`.

use crate::config::units::{ByteSize, HumanDuration};
use crate::sandbox::capability::{Capability, GrantContext, TaskSetup};
use crate::sandbox::outbound::policy::AllowedOrigin;
use crate::sandbox::outbound::{
    GuardedView, OutboundGrant, OutboundHooks, OutboundLimits, RequestResult,
};
use crate::sandbox::store::TaskState;
use anyhow::{bail, Context as _, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The outbound HTTP capability.
pub struct Outbound;

/// `[activity.outbound]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    /// Origins the guest may send HTTP requests to: `scheme://host[:port]`, with `*.`
    /// subdomain wildcards (default: none).
    #[serde(default)]
    pub allowed_hosts: Vec<AllowedOrigin>,
    /// Time a request may take to connect (default 5s).
    pub connect_timeout: Option<HumanDuration>,
    /// Time from a request to its response's first byte (default 30s).
    pub first_byte_timeout: Option<HumanDuration>,
    /// Time a whole request may take, never past the task's deadline (default 60s).
    pub request_timeout: Option<HumanDuration>,
    /// Bytes of a response body a guest may read (default 10MiB).
    pub max_response_bytes: Option<ByteSize>,
    /// Requests one task may send (default 100).
    pub max_requests_per_task: Option<u32>,
    /// Requests of the activity's tasks in flight at once (default 64).
    pub max_in_flight: Option<u32>,
}

impl OutboundSettings {
    /// The limits on the guest's requests, with their defaults.
    pub fn limits(&self) -> OutboundLimits {
        let defaults = OutboundLimits::default();
        let duration = |value: Option<HumanDuration>, default| value.map_or(default, |d| d.0);
        OutboundLimits {
            connect_timeout: duration(self.connect_timeout, defaults.connect_timeout),
            first_byte_timeout: duration(self.first_byte_timeout, defaults.first_byte_timeout),
            request_timeout: duration(self.request_timeout, defaults.request_timeout),
            max_response_bytes: self
                .max_response_bytes
                .map_or(defaults.max_response_bytes, |b| b.0),
            max_requests_per_task: self
                .max_requests_per_task
                .unwrap_or(defaults.max_requests_per_task),
            max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight),
        }
    }
}

/// One task's outbound HTTP: the standard wasi:http state and the hooks that admit, send
/// and count its requests.
pub struct OutboundTaskState {
    /// The standard wasi:http state.
    pub http: WasiHttpCtx,
    /// The task's guard on its requests.
    pub hooks: OutboundHooks,
}

/// `--allow-outbound URL`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct OutboundFlags {
    /// Let the guest send HTTP requests to this origin, e.g. `https://api.example.com`,
    /// `https://*.example.com` or `http://127.0.0.1:8080` (repeatable) [default: none]
    #[arg(long, value_name = "URL")]
    allow_outbound: Vec<AllowedOrigin>,
}

/// How each outbound request of one task ended, in order: `2xx`, `3xx`, `4xx`, `5xx` (the
/// response's status class), `error` (no response) or `denied`. A request is recorded when
/// its response is dropped: read it after the task's store is.
#[derive(Debug, Clone, Default)]
pub struct OutboundUsage(pub(crate) Arc<Mutex<Vec<RequestResult>>>);

impl OutboundUsage {
    /// How each request ended.
    pub fn results(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|r| r.status).collect()
    }

    /// The AWS calls the host signed: (service, how it ended).
    pub fn aws_calls(&self) -> Vec<(Arc<str>, &'static str)> {
        let results = self.0.lock().unwrap();
        results
            .iter()
            .filter_map(|r| Some((r.aws_service.clone()?, r.status)))
            .collect()
    }

    /// Requests the guest sent (they went out, whatever came back).
    pub fn sent(&self) -> usize {
        self.results().iter().filter(|r| **r != "denied").count()
    }

    /// Requests the guest was denied.
    pub fn denied(&self) -> usize {
        self.results().iter().filter(|r| **r == "denied").count()
    }
}

/// Labels of a guest's outbound request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    /// The activity's ARN.
    pub activity: String,
    /// How the request ended (see [`OutboundUsage`]).
    pub status: String,
}

/// Labels of a guest's AWS call, signed by the host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    /// The activity's ARN.
    pub activity: String,
    /// The service (`s3`, `sqs`...: granted in `[activity.aws] services`, so bounded).
    pub service: String,
    /// How the call ended (see [`OutboundUsage`]).
    pub status: String,
}

/// The outbound capability's metrics.
#[derive(Default)]
pub struct OutboundMetrics {
    /// Guests' outbound HTTP requests, by activity and how they ended.
    pub requests: Family<OutboundLabels, Counter>,
    /// Their AWS calls (a subset of the requests), by activity, service and how they ended.
    pub aws_calls: Family<AwsCallLabels, Counter>,
}

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let (capabilities, table) = self.capabilities_and_table();
        let outbound = &mut capabilities.outbound;
        WasiHttpCtxView {
            ctx: &mut outbound.http,
            table,
            hooks: &mut outbound.hooks,
        }
    }
}

/// The task's wasi:http state for the guarded `outgoing-handler`.
fn guarded_http(state: &mut TaskState) -> GuardedView<'_> {
    let (capabilities, table) = state.capabilities_and_table();
    let outbound = &mut capabilities.outbound;
    GuardedView {
        ctx: &mut outbound.http,
        table,
        hooks: &mut outbound.hooks,
    }
}

/// The `wasi:http` version this host implements (wit/deps/http); guests importing any
/// earlier 0.2.x are linked to it too.
const WASI_HTTP_OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";

impl Capability for Outbound {
    type Settings = OutboundSettings;
    type Grant = Arc<OutboundGrant>;
    type TaskState = OutboundTaskState;
    type Usage = OutboundUsage;
    type Metrics = OutboundMetrics;
    type Flags = OutboundFlags;

    fn apply_flags(flags: OutboundFlags, settings: &mut OutboundSettings) {
        settings.allowed_hosts.extend(flags.allow_outbound);
    }

    fn validate(settings: &OutboundSettings) -> Result<()> {
        let limits = settings.limits();
        for (key, zero) in [
            ("connect_timeout", limits.connect_timeout.is_zero()),
            ("first_byte_timeout", limits.first_byte_timeout.is_zero()),
            ("request_timeout", limits.request_timeout.is_zero()),
            ("max_response_bytes", limits.max_response_bytes == 0),
            ("max_requests_per_task", limits.max_requests_per_task == 0),
            ("max_in_flight", limits.max_in_flight == 0),
        ] {
            if zero {
                bail!("key `{key}` must be more than 0");
            }
        }
        Ok(())
    }

    fn grant(settings: &OutboundSettings, _: &GrantContext<'_>) -> Arc<OutboundGrant> {
        Arc::new(OutboundGrant::new(
            settings.allowed_hosts.clone().into(),
            settings.limits(),
        ))
    }

    fn task_state(grant: &Arc<OutboundGrant>, task: &TaskSetup<'_>) -> Result<OutboundTaskState> {
        Ok(OutboundTaskState {
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks::new(
                grant.clone(),
                task.grants.aws.clone(),
                task.task.activity_arn.clone(),
                task.task.task_id.clone(),
                task.deadline,
            ),
        })
    }

    /// Links `wasi:http/types` (the standard implementation) and
    /// `wasi:http/outgoing-handler` (guarded: each request is admitted by the activity's
    /// allowlist and limits first).
    fn link(linker: &mut Linker<TaskState>) -> Result<()> {
        use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, RequestOptions};
        use wasmtime_wasi_http::p2::bindings::{http, LinkOptions};
        use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
        type HandleResult = (std::result::Result<Resource<HostFutureIncomingResponse>, ErrorCode>,);

        http::types::add_to_linker::<_, wasmtime_wasi_http::WasiHttp>(
            linker,
            &LinkOptions::default().into(),
            <TaskState as wasmtime_wasi_http::WasiHttpView>::http,
        )
        .map_err(anyhow::Error::from)
        .context("linking wasi:http/types")?;
        linker
            .instance(WASI_HTTP_OUTGOING_HANDLER)
            .and_then(|mut handler| {
                handler.func_wrap(
                    "handle",
                    |mut store: StoreContextMut<'_, TaskState>,
                     (request, options): (
                        Resource<HostOutgoingRequest>,
                        Option<Resource<RequestOptions>>,
                    )|
                     -> wasmtime::Result<HandleResult> {
                        match guarded_http(store.data_mut()).handle(request, options) {
                            Ok(response) => Ok((Ok(response),)),
                            Err(error) => error.downcast().map(|code| (Err(code),)),
                        }
                    },
                )
            })
            .map_err(anyhow::Error::from)
            .context("linking wasi:http/outgoing-handler")
    }

    fn usage(state: &OutboundTaskState) -> OutboundUsage {
        state.hooks.usage()
    }

    fn register_metrics(metrics: &OutboundMetrics, registry: &mut Registry) {
        registry.register(
            "outbound_requests",
            "Guests' outbound HTTP requests by status class",
            metrics.requests.clone(),
        );
        registry.register(
            "aws_requests",
            "Guests' AWS calls signed by the host, by service and status class",
            metrics.aws_calls.clone(),
        );
    }

    fn record(metrics: &OutboundMetrics, activity: &str, usage: &OutboundUsage) {
        for status in usage.results() {
            metrics
                .requests
                .get_or_create(&OutboundLabels {
                    activity: activity.to_string(),
                    status: status.to_string(),
                })
                .inc();
        }
        for (service, status) in usage.aws_calls() {
            metrics
                .aws_calls
                .get_or_create(&AwsCallLabels {
                    activity: activity.to_string(),
                    service: service.to_string(),
                    status: status.to_string(),
                })
                .inc();
        }
    }

    fn provider(import: &str) -> Option<&'static str> {
        import.starts_with("wasi:http/").then_some(
            "sfn-wasm-worker (outbound HTTP to the activity's [activity.outbound] allowed_hosts \
             only, and the AWS services of [activity.aws], signed by the host)",
        )
    }
}
