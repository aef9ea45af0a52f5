//! OpenTelemetry traces of tasks, opt-in: `[worker] otlp_endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. Exported over
//! OTLP/HTTP (protobuf) in batches, off the tasks' path.
//!
//! One trace per task, written when the task has ended: a `task` span (activity, task id,
//! worker, instance, outcome, error name) with a child span per phase (`journal`,
//! `instantiate`, `guest`, `journal outcome`, `wait for slot`: the wait for one of the
//! activity's report slots, as a task's own slot is taken before its poll; `report`) and one
//! per outbound HTTP request or host-signed AWS call of its guest (origin, status, AWS
//! service, duration). Never a token, header, body, input or output.

use crate::sandbox::outbound::RequestResult;
use crate::sandbox::Phases;
use anyhow::{Context as _, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::{Duration, SystemTime};

/// The standard variables that turn traces on when `[worker] otlp_endpoint` is not set.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The exporter of task traces.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// One phase of a task: its name, start and end.
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
}

/// A task's phases as they end, each starting where the last one ended.
pub(crate) struct Timeline {
    last: SystemTime,
    phases: Vec<Phase>,
}

impl Timeline {
    /// A timeline starting now.
    pub(crate) fn start() -> Timeline {
        Timeline {
            last: SystemTime::now(),
            phases: Vec::with_capacity(6),
        }
    }

    /// Ends the phase `name` now.
    pub(crate) fn end_phase(&mut self, name: &'static str) {
        let now = SystemTime::now();
        self.phases.push(Phase {
            name,
            start: self.last,
            end: now,
        });
        self.last = now;
    }

    /// Ends the sandbox's phases now: `instantiate` (the store and instance made, as long as
    /// the sandbox measured) then `guest`.
    pub(crate) fn end_sandbox(&mut self, measured: &Phases) {
        let now = SystemTime::now();
        let made = (self.last + measured.store + measured.instantiate).min(now);
        self.phases.push(Phase {
            name: "instantiate",
            start: self.last,
            end: made,
        });
        self.phases.push(Phase {
            name: "guest",
            start: made,
            end: now,
        });
        self.last = now;
    }

    /// The phases so far.
    pub(crate) fn into_phases(self) -> Vec<Phase> {
        self.phases
    }
}

/// What a task's trace shows.
pub(crate) struct TaskTrace<'a> {
    pub(crate) activity: &'a str,
    pub(crate) task_id: &'a str,
    pub(crate) worker: &'a str,
    /// `fresh`, `ready` or `warm`.
    pub(crate) instance: &'static str,
    /// `succeeded`, `failed` or `abandoned`.
    pub(crate) outcome: &'static str,
    /// The error name of a failed task.
    pub(crate) error: Option<&'a str>,
    /// Its phases, in order: the task span runs from the first's start to the last's end.
    pub(crate) phases: Vec<Phase>,
    /// Its guest's outbound requests and signed AWS calls.
    pub(crate) requests: &'a [RequestResult],
}

impl Traces {
    /// Starts exporting to `endpoint` (an OTLP/HTTP base URL such as `http://127.0.0.1:4318`;
    /// `/v1/traces` is added) or, without one, to what the standard variables say; `None`
    /// when neither asks for traces. Call it inside the tokio runtime.
    pub fn start(endpoint: Option<&str>, worker_name: &str) -> Result<Option<Traces>> {
        let from_environment = ENDPOINT_VARIABLES
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()));
        if endpoint.is_none() && !from_environment {
            return Ok(None);
        }
        let mut exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(Duration::from_secs(10));
        if let Some(endpoint) = endpoint {
            exporter = exporter.with_endpoint(traces_url(endpoint));
        }
        let exporter = exporter.build().with_context(|| {
            format!(
                "cannot export traces to {}: give `[worker] otlp_endpoint` as an http(s) URL",
                endpoint.unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint")
            )
        })?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("sfn-wasm-worker");
        }
        let resource = resource
            .with_attribute(KeyValue::new(
                "service.instance.id",
                worker_name.to_string(),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sfn-wasm-worker");
        Ok(Some(Traces { provider, tracer }))
    }

    /// Records the trace of one ended task.
    pub(crate) fn record(&self, task: &TaskTrace) {
        let (Some(first), Some(last)) = (task.phases.first(), task.phases.last()) else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("activity", task.activity.to_string()),
            KeyValue::new("task.id", task.task_id.to_string()),
            KeyValue::new("worker", task.worker.to_string()),
            KeyValue::new("instance", task.instance),
            KeyValue::new("outcome", task.outcome),
        ];
        if let Some(error) = task.error {
            attributes.push(KeyValue::new("error", error.to_string()));
        }
        let mut span = self
            .tracer
            .span_builder("task")
            .with_kind(SpanKind::Consumer)
            .with_start_time(first.start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &Context::new());
        span.set_status(match task.error {
            Some(error) => Status::error(error.to_string()),
            None => Status::Ok,
        });
        let task_context = Context::new().with_span(span);
        for phase in &task.phases {
            self.tracer
                .span_builder(phase.name)
                .with_start_time(phase.start)
                .start_with_context(&self.tracer, &task_context)
                .end_with_timestamp(phase.end);
        }
        for request in task.requests {
            self.record_request(request, &task_context);
        }
        task_context.span().end_with_timestamp(last.end);
    }

    /// A child span of `task` for one outbound request or signed AWS call.
    fn record_request(&self, request: &RequestResult, task: &Context) {
        let name = match &request.aws_service {
            Some(service) => format!("AWS {service}"),
            None => "outbound HTTP".to_string(),
        };
        let mut attributes = vec![
            KeyValue::new("origin", request.origin.clone()),
            KeyValue::new("result", request.status),
        ];
        if let Some(code) = request.code {
            attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        if let Some(service) = &request.aws_service {
            attributes.push(KeyValue::new("aws.service", service.to_string()));
        }
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(request.started)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, task);
        if matches!(request.status, "denied" | "error" | "5xx") {
            span.set_status(Status::error(request.status));
        }
        span.end_with_timestamp(request.started + request.duration);
    }

    /// Exports what is still buffered and stops; logs a failure.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(err)) = stopped {
            tracing::warn!(error = %err, "traces: the last batch may not have been exported");
        }
    }
}

/// The OTLP/HTTP traces URL of a base `endpoint` (as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_to_a_base_url_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
