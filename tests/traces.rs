//! OpenTelemetry traces (`[worker] otlp_endpoint`) from the worker binary to an OTLP/HTTP
//! collector in this process (protobuf `ExportTraceServiceRequest`s decoded as a collector
//! would): one `task` span per task, with its activity, task id, outcome and error name, a
//! child span per phase and per outbound request (origin and status), and nothing of the
//! task's token, input, output, headers or bodies.

mod common;

use bytes::Bytes;
use common::http_service::HttpService;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use prost::Message as _;
use serde_json::json;
use sfn_fake::{FakeSfn, TaskState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// What the collector keeps, shared with its connections.
type Kept<T> = Arc<Mutex<Vec<T>>>;

/// An OTLP/HTTP collector on 127.0.0.1: keeps every span it is sent, and the raw bodies.
struct Collector {
    endpoint: String,
    spans: Kept<Span>,
    bodies: Kept<Bytes>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (spans, bodies): (Kept<Span>, Kept<Bytes>) = (Arc::default(), Arc::default());
        let kept = (Arc::clone(&spans), Arc::clone(&bodies));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (spans, bodies) = (kept.0.clone(), kept.1.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (spans, bodies) = (spans.clone(), bodies.clone());
                            async move {
                                assert_eq!(request.uri().path(), "/v1/traces");
                                assert_eq!(
                                    request.headers()["content-type"],
                                    "application/x-protobuf"
                                );
                                let body = request.into_body().collect().await?.to_bytes();
                                let export = ExportTraceServiceRequest::decode(body.clone())
                                    .expect("an OTLP trace export");
                                bodies.lock().unwrap().push(body);
                                for resource in export.resource_spans {
                                    for scope in resource.scope_spans {
                                        spans.lock().unwrap().extend(scope.spans);
                                    }
                                }
                                Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            endpoint,
            spans,
            bodies,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|kv| kv.key == key)?;
    Some(match value.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(text) => text.clone(),
        AnyValue::IntValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_is_a_trace_with_its_phases_and_outbound_requests() {
    let collector = Collector::start().await;
    let (allowed, other) = (HttpService::start().await, HttpService::start().await);
    let fake = FakeSfn::start().await;
    let (probe_arn, adversary_arn) = (
        fake.create_activity("traced-probe"),
        fake.create_activity("traced-adversary"),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    write_config(
        &config,
        json!({
            "worker": {
                "name": "traced",
                "region": "us-east-1",
                "endpoint_url": fake.endpoint,
                "otlp_endpoint": collector.endpoint,
            },
            "activity": [{
                "arn": probe_arn,
                "component": path_value(&guest_path("http-probe")),
                "outbound": {"allowed_hosts": [allowed.origin()]},
            }, {
                "arn": adversary_arn,
                "component": path_value(&guest_path("adversary")),
            }],
        }),
    );
    let worker = LoggedWorker::start(&config, "info");
    let url = |service: &HttpService| json!({"url": format!("{}/echo", service.origin())});
    let reached = fake.enqueue(&probe_arn, &url(&allowed).to_string());
    let denied = fake.enqueue(&probe_arn, &url(&other).to_string());
    let failed = fake.enqueue(
        &adversary_arn,
        &json!({"behaviour": "fail", "error": "Traced.Failure", "cause": "secret-cause"})
            .to_string(),
    );
    let mut task_ids = Vec::new();
    for token in [&reached, &denied, &failed] {
        fake.wait_for_result(token, Duration::from_secs(30)).await;
        task_ids.push(sfn_wasm_worker::worker::sfn::task_id(token));
    }
    assert!(matches!(fake.task(&failed).state, TaskState::Failed { .. }));

    // The batch goes out within its delay (5 s by default); shutdown sends what is left.
    let deadline = Instant::now() + Duration::from_secs(20);
    while collector
        .spans()
        .iter()
        .filter(|s| s.name == "task")
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "spans so far: {:?}",
            collector.spans()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = worker.stop();
    let spans = collector.spans();
    let task_span = |task_id: &str| {
        spans
            .iter()
            .find(|s| s.name == "task" && attribute(s, "task.id").as_deref() == Some(task_id))
            .unwrap_or_else(|| panic!("no task span for {task_id}: {spans:?}\n{log}"))
    };
    let children = |parent: &Span| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id && s.trace_id == parent.trace_id)
            .collect()
    };

    for (task_id, outcome) in task_ids.iter().zip(["succeeded", "succeeded", "failed"]) {
        let task = task_span(task_id);
        assert!(
            task.parent_span_id.is_empty(),
            "a task span is a trace's root"
        );
        assert_eq!(attribute(task, "outcome").as_deref(), Some(outcome));
        assert_eq!(attribute(task, "worker").as_deref(), Some("traced"));
        let phases: Vec<&str> = children(task)
            .iter()
            .map(|s| s.name.as_str())
            .filter(|name| !name.starts_with("outbound"))
            .collect();
        for phase in ["instantiate", "guest", "wait for slot", "report"] {
            assert!(phases.contains(&phase), "{task_id}: phases {phases:?}");
        }
        for child in children(task) {
            assert!(
                child.start_time_unix_nano >= task.start_time_unix_nano
                    && child.end_time_unix_nano <= task.end_time_unix_nano,
                "{} lies outside its task",
                child.name
            );
        }
    }
    let outbound = |task_id: &str| -> Vec<&Span> {
        children(task_span(task_id))
            .into_iter()
            .filter(|s| s.name == "outbound HTTP")
            .collect()
    };
    let reached_calls = outbound(&task_ids[0]);
    assert_eq!(reached_calls.len(), 1);
    assert_eq!(
        attribute(reached_calls[0], "origin").as_deref(),
        Some(allowed.origin().as_str())
    );
    assert_eq!(
        attribute(reached_calls[0], "http.response.status_code").as_deref(),
        Some("200")
    );
    let denied_calls = outbound(&task_ids[1]);
    assert_eq!(denied_calls.len(), 1);
    assert_eq!(
        attribute(denied_calls[0], "result").as_deref(),
        Some("denied")
    );
    let failed_task = task_span(&task_ids[2]);
    assert_eq!(
        attribute(failed_task, "error").as_deref(),
        Some("Traced.Failure")
    );
    let status = failed_task.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);

    // What was exported holds no token, no input and no cause.
    let exported: Vec<u8> = collector.bodies.lock().unwrap().concat();
    let exported = String::from_utf8_lossy(&exported);
    for secret in [reached.as_str(), failed.as_str(), "secret-cause", "/echo"] {
        assert!(!exported.contains(secret), "{secret:?} was exported");
    }
}
