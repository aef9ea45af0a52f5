//! The metrics and health endpoints: a scripted run through the Step Functions fake, then
//! `/metrics` scraped and its names, labels and counts checked; `/readyz` turns 503 once the
//! worker starts draining.

mod common;

use common::*;
use serde_json::json;
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use sfn_wasm_worker::worker::sfn::SfnClient;
use sfn_wasm_worker::worker::Worker;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// GETs `path` from `addr`; returns the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_string())
}

/// A free port on 127.0.0.1.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of the sample line starting with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_run_and_readiness_follows_the_drain() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("metered");
    let addr = free_addr();
    let config = Config {
        worker: WorkerSection {
            name: Some("metrics-test".into()),
            metrics_addr: Some(addr),
            drain_timeout: Some(sfn_wasm_worker::config::units::HumanDuration(WAIT)),
            ..Default::default()
        },
        activities: vec![ActivityConfig::new(arn.clone(), guest_path("adversary"))],
    };
    let worker = Worker::new(runtime(), &config, SfnClient::new(&fake.sdk_config().await)).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let inputs = [
        json!({"behaviour": "echo"}),
        json!({"behaviour": "echo"}),
        json!({"behaviour": "fail", "error": "Order.Invalid"}),
        json!({"behaviour": "panic"}),
    ];
    let tokens: Vec<String> = inputs
        .iter()
        .map(|input| fake.enqueue(&arn, &input.to_string()))
        .collect();
    for token in &tokens {
        fake.wait_for_result(token, WAIT).await;
    }
    assert!(matches!(
        fake.task(&tokens[0]).state,
        TaskState::Succeeded(_)
    ));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let tasks = |outcome: &str, error: &str| {
        sample(
            &metrics,
            &format!("sfn_worker_tasks_total{{activity=\"{arn}\",outcome=\"{outcome}\",error=\"{error}\"}}"),
        )
    };
    assert_eq!(tasks("succeeded", ""), 2.0);
    assert_eq!(
        tasks("failed", "guest"),
        1.0,
        "a guest's own error is `guest`"
    );
    assert_eq!(tasks("failed", "Wasm.Trap"), 1.0);
    assert_eq!(
        sample(
            &metrics,
            "sfn_worker_api_calls_total{operation=\"SendTaskSuccess\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &metrics,
            "sfn_worker_api_calls_total{operation=\"SendTaskFailure\"}"
        ),
        2.0
    );
    assert!(
        sample(
            &metrics,
            "sfn_worker_api_calls_total{operation=\"GetActivityTask\"}"
        ) >= 4.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("sfn_worker_task_seconds_count{{activity=\"{arn}\"}}")
        ),
        4.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("sfn_worker_sandbox_seconds_count{{activity=\"{arn}\"}}")
        ),
        4.0
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("sfn_worker_tasks_in_flight{{activity=\"{arn}\"}}")
        ),
        0.0
    );
    assert!(
        sample(
            &metrics,
            &format!("sfn_worker_guest_peak_memory_bytes{{activity=\"{arn}\"}}")
        ) > 0.0
    );
    assert!(
        sample(
            &metrics,
            &format!("sfn_worker_component_load_seconds{{activity=\"{arn}\"}}")
        ) > 0.0
    );
    assert!(sample(&metrics, "sfn_worker_process_resident_memory_bytes") > 1e6);
    assert!(metrics.contains("sfn_worker_open_polls{"), "{metrics}");
    assert!(
        metrics.contains("sfn_worker_empty_polls_total{")
            || metrics.contains("sfn_worker_free_slots{"),
        "{metrics}"
    );

    // Draining: not ready any more, while the open poll is still awaited.
    fake.set_poll_hold(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    assert_eq!(get(addr, "/healthz").await.0, 200);
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_metrics_address_in_use_is_refused_before_any_poll() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("unserved");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = Config {
        worker: WorkerSection {
            metrics_addr: Some(taken.local_addr().unwrap()),
            ..Default::default()
        },
        activities: vec![ActivityConfig::new(arn.clone(), guest_path("rust-order"))],
    };
    let worker = Worker::new(runtime(), &config, SfnClient::new(&fake.sdk_config().await)).unwrap();
    let err = worker.run(CancellationToken::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("metrics_addr"), "{err:#}");
    assert_eq!(fake.open_polls(&arn), 0);
}
