//! Outbound HTTP from guests (`wasi:http`), against a real HTTP service on 127.0.0.1: what an
//! activity's `[activity.outbound] allowed_hosts` lets through, what it refuses (and that refused
//! requests never reach the service), the protected addresses, and the limits.

mod common;

use common::http_service::HttpService;
use common::*;
use serde_json::{json, Value};
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use sfn_wasm_worker::sandbox::outbound::client::{ResolveFuture, Resolver};
use sfn_wasm_worker::sandbox::outbound::policy::Allowlist;
use sfn_wasm_worker::sandbox::outbound::{OutboundGrant, OutboundLimits};
use sfn_wasm_worker::sandbox::{Grants, Outcome, TaskEnd, TaskLimits};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A resolver that answers from a table, and counts its lookups.
#[derive(Default)]
struct TableResolver {
    answers: Mutex<Vec<(String, Vec<SocketAddr>)>>,
    lookups: AtomicUsize,
}

impl TableResolver {
    fn with(entries: &[(&str, &[&str])]) -> Arc<TableResolver> {
        let answers = entries
            .iter()
            .map(|(name, ips)| {
                let addresses = ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
                    .collect();
                (name.to_string(), addresses)
            })
            .collect();
        Arc::new(TableResolver {
            answers: Mutex::new(answers),
            lookups: AtomicUsize::new(0),
        })
    }
}

impl Resolver for TableResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .answers
            .lock()
            .unwrap()
            .iter()
            .find(|(name, _)| name == host)
            .map(|(_, addresses)| {
                addresses
                    .iter()
                    .map(|a| SocketAddr::new(a.ip(), port))
                    .collect::<Vec<_>>()
            });
        Box::pin(async move {
            answer.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))
        })
    }
}

fn grants(
    allowed: &[&str],
    limits: OutboundLimits,
    resolver: Option<Arc<TableResolver>>,
) -> Grants {
    let mut grant = OutboundGrant::new(Allowlist::parse(allowed).unwrap(), limits);
    if let Some(resolver) = resolver {
        grant = grant.with_resolver(resolver);
    }
    Grants {
        outbound: Arc::new(grant),
        ..Grants::default()
    }
}

/// Runs the http-probe guest with `input` under `grants`; returns its outcome.
async fn probe_with(input: Value, grants: &Grants, limits: &TaskLimits) -> Outcome {
    let (task, _) = task(&input.to_string());
    match guest("http-probe").run(task, limits, grants).await {
        (TaskEnd::Report(outcome), _) => outcome,
        (TaskEnd::Abandoned(why), _) => panic!("abandoned: {why}"),
    }
}

async fn probe(input: Value, grants: &Grants) -> Value {
    expect_success(&probe_with(input, grants, &limits()).await)
}

fn error_of(result: &Value) -> String {
    result["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {result}"))
        .to_string()
}

#[tokio::test]
async fn an_allowed_origin_is_reached_with_get_and_post() {
    let service = HttpService::start().await;
    let grants = grants(&[&service.origin()], OutboundLimits::default(), None);

    let got = probe(
        json!({"url": format!("{}/echo?x=1", service.origin())}),
        &grants,
    )
    .await;
    assert_eq!(got["status"], 200, "{got}");
    assert_eq!(got["headers"]["x-test"], "yes", "{got}");
    let echo: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["host"], format!("127.0.0.1:{}", service.port));

    let got = probe(
        json!({"url": format!("{}/echo", service.origin()), "method": "POST", "body": "{\"n\":1}"}),
        &grants,
    )
    .await;
    let echo: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (echo["method"].as_str(), echo["body"].as_str()),
        (Some("POST"), Some("{\"n\":1}"))
    );
    assert_eq!(service.requests(), 2);
}

#[tokio::test]
async fn other_hosts_ports_and_schemes_are_denied_before_anything_is_sent() {
    let service = HttpService::start().await;
    let other = HttpService::start().await;
    let grants = grants(&[&service.origin()], OutboundLimits::default(), None);
    for url in [
        format!("http://localhost:{}/echo", service.port),
        format!("http://127.0.0.1:{}/echo", other.port),
        format!("https://127.0.0.1:{}/echo", service.port),
    ] {
        let got = probe(json!({ "url": url }), &grants).await;
        assert!(error_of(&got).contains("HttpRequestDenied"), "{url}: {got}");
    }
    let nothing = probe(
        json!({"url": format!("{}/echo", service.origin())}),
        &Grants::default(),
    )
    .await;
    assert!(
        error_of(&nothing).contains("HttpRequestDenied"),
        "{nothing}"
    );
    assert_eq!((service.requests(), other.requests()), (0, 0));
}

#[tokio::test]
async fn a_wildcard_covers_subdomains_through_the_resolver() {
    let service = HttpService::start().await;
    let resolver = TableResolver::with(&[
        ("api.example.test", &["127.0.0.1"]),
        ("example.test", &["127.0.0.1"]),
    ]);
    let allowed = format!("http://*.example.test:{}", service.port);
    let grants = grants(&[&allowed], OutboundLimits::default(), Some(resolver));
    let got = probe(
        json!({"url": format!("http://api.example.test:{}/echo", service.port)}),
        &grants,
    )
    .await;
    assert_eq!(got["status"], 200, "{got}");
    let apex = probe(
        json!({"url": format!("http://example.test:{}/echo", service.port)}),
        &grants,
    )
    .await;
    assert!(error_of(&apex).contains("HttpRequestDenied"), "{apex}");
    assert_eq!(service.requests(), 1);
}

#[tokio::test]
async fn a_host_header_that_differs_from_the_url_is_refused() {
    let service = HttpService::start().await;
    let grants = grants(&[&service.origin()], OutboundLimits::default(), None);
    let got = probe(
        json!({"url": format!("{}/echo", service.origin()), "headers": {"host": "internal.example"}}),
        &grants,
    )
    .await;
    assert!(got.get("error").is_some(), "{got}");
    assert_eq!(service.requests(), 0);
}

/// The body stays open for the guest when its request fails before it is sent: a guest still
/// writing its body (here 3 MiB, past the 1 MiB the host buffers, so the guest waits for the
/// host between writes) gets the response's error code, not a closed stream's
/// "connection reset".
#[tokio::test]
async fn a_request_refused_while_its_body_is_written_reports_why() {
    let resolver = TableResolver::with(&[("metadata.example.test", &["169.254.169.254"])]);
    let grants = grants(
        &["http://metadata.example.test"],
        OutboundLimits::default(),
        Some(resolver),
    );
    let got = probe(
        json!({
            "url": "http://metadata.example.test/upload",
            "method": "POST",
            "body_bytes": 3 << 20,
        }),
        &grants,
    )
    .await;
    assert!(error_of(&got).contains("DestinationIpProhibited"), "{got}");
}

#[tokio::test]
async fn metadata_addresses_are_refused_under_a_wildcard_and_through_names() {
    let resolver = TableResolver::with(&[
        ("metadata.example.test", &["169.254.169.254"]),
        ("creds.example.test", &["169.254.170.2"]),
        ("v6.example.test", &["fd00:ec2::254"]),
    ]);
    let grants = grants(
        &["http://*.example.test"],
        OutboundLimits::default(),
        Some(resolver),
    );
    for name in ["metadata", "creds", "v6"] {
        let got = probe(
            json!({"url": format!("http://{name}.example.test/latest/meta-data/")}),
            &grants,
        )
        .await;
        assert!(
            error_of(&got).contains("DestinationIpProhibited"),
            "{name}: {got}"
        );
    }
    let direct = probe(
        json!({"url": "http://169.254.169.254/latest/meta-data/"}),
        &grants,
    )
    .await;
    assert!(error_of(&direct).contains("HttpRequestDenied"), "{direct}");
}

#[tokio::test]
async fn the_connection_goes_to_the_address_that_was_checked() {
    let service = HttpService::start().await;
    let resolver = TableResolver::with(&[("api.example.test", &["127.0.0.1"])]);
    let allowed = format!("http://api.example.test:{}", service.port);
    let grants = grants(
        &[&allowed],
        OutboundLimits::default(),
        Some(resolver.clone()),
    );
    let got = probe(
        json!({"url": format!("http://api.example.test:{}/echo", service.port)}),
        &grants,
    )
    .await;
    assert_eq!(got["status"], 200, "{got}");
    // One lookup per request: the address vetted is the address connected to.
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_service_that_never_answers_times_out_for_the_guest() {
    let service = HttpService::start().await;
    let limits = OutboundLimits {
        first_byte_timeout: Duration::from_secs(1),
        ..OutboundLimits::default()
    };
    let grants = grants(&[&service.origin()], limits, None);
    let started = Instant::now();
    let got = probe(
        json!({"url": format!("{}/never", service.origin())}),
        &grants,
    )
    .await;
    assert!(error_of(&got).contains("Timeout"), "{got}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_task_deadline_that_falls_first_is_a_wasm_timeout() {
    let service = HttpService::start().await;
    let grants = grants(&[&service.origin()], OutboundLimits::default(), None);
    let limits = TaskLimits {
        timeout: Duration::from_secs(1),
        ..limits()
    };
    let outcome = probe_with(
        json!({"url": format!("{}/never", service.origin())}),
        &grants,
        &limits,
    )
    .await;
    expect_failure(&outcome, "Wasm.Timeout");
}

#[tokio::test]
async fn an_endless_body_is_capped_with_an_error_the_guest_sees() {
    let service = HttpService::start().await;
    let limits = OutboundLimits {
        max_response_bytes: 256 << 10,
        ..OutboundLimits::default()
    };
    let grants = grants(&[&service.origin()], limits, None);
    let got = probe(
        json!({"url": format!("{}/endless", service.origin())}),
        &grants,
    )
    .await;
    assert!(got.get("error").is_some(), "{got}");
}

#[tokio::test]
async fn requests_past_the_per_task_limit_are_refused() {
    let service = HttpService::start().await;
    let limits = OutboundLimits {
        max_requests_per_task: 2,
        ..OutboundLimits::default()
    };
    let grants = grants(&[&service.origin()], limits, None);
    let got = probe(
        json!({"url": format!("{}/echo", service.origin()), "times": 3}),
        &grants,
    )
    .await;
    assert_eq!(
        (got[0]["status"].as_u64(), got[1]["status"].as_u64()),
        (Some(200), Some(200)),
        "{got}"
    );
    assert!(error_of(&got[2]).contains("HttpRequestDenied"), "{got}");
    assert_eq!(service.requests(), 2);
}

#[tokio::test]
async fn two_activities_in_one_worker_cannot_use_each_others_grants() {
    let (first, second) = (HttpService::start().await, HttpService::start().await);
    let fake = FakeSfn::start().await;
    let (arn_a, arn_b) = (
        fake.create_activity("tenant-a"),
        fake.create_activity("tenant-b"),
    );
    let activity = |arn: &str, service: &HttpService| {
        let mut activity = ActivityConfig::new(arn.to_string(), guest_path("http-probe"));
        activity.capabilities.outbound.allowed_hosts = vec![service.origin().parse().unwrap()];
        activity
    };
    let config = Config {
        worker: WorkerSection {
            name: Some("outbound-tests".into()),
            ..Default::default()
        },
        activities: vec![activity(&arn_a, &first), activity(&arn_b, &second)],
    };
    let worker = RunningWorker::start(&fake, config).await;
    let call = |arn: &str, service: &HttpService| {
        fake.enqueue(
            arn,
            &json!({"url": format!("{}/echo", service.origin())}).to_string(),
        )
    };
    let tokens = [
        (call(&arn_a, &first), true),
        (call(&arn_a, &second), false),
        (call(&arn_b, &second), true),
        (call(&arn_b, &first), false),
    ];
    for (token, allowed) in tokens {
        let TaskState::Succeeded(output) =
            fake.wait_for_result(&token, Duration::from_secs(30)).await
        else {
            panic!("the probe failed");
        };
        let got: Value = serde_json::from_str(&output).unwrap();
        if allowed {
            assert_eq!(got["status"], 200, "{got}");
        } else {
            assert!(error_of(&got).contains("HttpRequestDenied"), "{got}");
        }
    }
    assert_eq!((first.requests(), second.requests()), (1, 1));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_activitys_in_flight_bound_wait_then_give_up() {
    let service = HttpService::start().await;
    let limits = OutboundLimits {
        max_in_flight: 1,
        connect_timeout: Duration::from_secs(1),
        first_byte_timeout: Duration::from_secs(4),
        ..OutboundLimits::default()
    };
    let grants = grants(&[&service.origin()], limits, None);
    let never = json!({"url": format!("{}/never", service.origin())});
    let holder = probe(never.clone(), &grants);
    let waiter = async {
        // Starts once the holder's request has the activity's only slot: it reached the
        // service (a fixed head start can be too short on a loaded machine).
        let started = Instant::now();
        while service.requests() == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the holder's request never reached the service"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        probe(
            json!({"url": format!("{}/echo", service.origin())}),
            &grants,
        )
        .await
    };
    let (held, waited) = tokio::join!(holder, waiter);
    assert!(error_of(&held).contains("Timeout"), "{held}");
    assert!(
        error_of(&waited).contains("ConnectionLimitReached"),
        "{waited}"
    );
    assert_eq!(
        service.requests(),
        1,
        "only the holder's request reached the service"
    );
}
