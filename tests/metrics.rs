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
/// How long a poll must stay open without an error for the worker to be ready (the host's
/// `poller::POLL_HELD_OPEN`).
const POLL_HELD_OPEN: Duration = Duration::from_secs(1);

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

/// The value of the sample line starting with `series` (name and labels), if there is one.
fn try_sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The value of the sample line starting with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> f64 {
    try_sample(metrics, series).unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// Scrapes `/metrics` every 20 ms until `settled` holds (at most [`WAIT`]); the last scrape.
/// The worker counts a task once its report's answer has come back, after the fake has
/// seen the report: a scrape right after the fake's result can come too early.
async fn scrape_until(addr: SocketAddr, settled: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, metrics) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if settled(&metrics) || std::time::Instant::now() >= deadline {
            return metrics; // the caller's assertions say what is off
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enqueues one task per input on `arn` and waits until all are reported; their tokens.
async fn run_all(fake: &FakeSfn, arn: &str, inputs: &[serde_json::Value]) -> Vec<String> {
    let tokens: Vec<String> = inputs
        .iter()
        .map(|input| fake.enqueue(arn, &input.to_string()))
        .collect();
    for token in &tokens {
        fake.wait_for_result(token, WAIT).await;
    }
    tokens
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
    let worker = RunningWorker::start(&fake, config).await;

    let inputs = [
        json!({"behaviour": "echo"}),
        json!({"behaviour": "echo"}),
        json!({"behaviour": "fail", "error": "Order.Invalid"}),
        json!({"behaviour": "panic"}),
    ];
    let tokens = run_all(&fake, &arn, &inputs).await;
    assert!(matches!(
        fake.task(&tokens[0]).state,
        TaskState::Succeeded(_)
    ));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
    // A task's duration is observed last, after its outcome and its report's API call are
    // counted: once all 4 are there, every count below is final.
    let task_seconds_count = format!("sfn_worker_task_seconds_count{{activity=\"{arn}\"}}");
    let metrics = scrape_until(addr, |metrics| {
        try_sample(metrics, &task_seconds_count) >= Some(4.0)
    })
    .await;
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
    assert_eq!(sample(&metrics, &task_seconds_count), 4.0);
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

    // The busy ratio: running tasks over slots (4 by default), per activity and in all.
    let busy = |metrics: &str| {
        (
            sample(
                metrics,
                &format!("sfn_worker_busy_ratio{{activity=\"{arn}\"}}"),
            ),
            sample(metrics, "sfn_worker_busy_ratio{activity=\"all\"}"),
        )
    };
    assert_eq!(busy(&metrics), (0.0, 0.0));
    let sleeper = fake.enqueue(&arn, &json!({"behaviour": "sleep", "ms": 3000}).to_string());
    fake.wait_until(WAIT, "the sleeper runs", |fake| fake.running(&arn) == 1)
        .await;
    // The worker counts the task in flight once the poll's answer has reached it.
    let metrics = scrape_until(addr, |metrics| busy(metrics) != (0.0, 0.0)).await;
    assert_eq!(busy(&metrics), (0.25, 0.25));
    fake.wait_for_result(&sleeper, WAIT).await;
    let metrics = scrape_until(addr, |metrics| busy(metrics) == (0.0, 0.0)).await;
    assert_eq!(busy(&metrics), (0.0, 0.0));

    // Draining: not ready any more, while the open poll is still awaited.
    fake.set_poll_hold(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(400)).await;
    worker.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "not ready: draining\n"));
    assert_eq!(get(addr, "/healthz").await.0, 200);
    worker.stop().await;
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
    let worker = Worker::new(
        runtime(),
        &config.validate().unwrap(),
        SfnClient::new(&fake.sdk_config().await),
    )
    .unwrap();
    let err = worker.run(CancellationToken::new()).await.unwrap_err();
    assert!(format!("{err:#}").contains("metrics_addr"), "{err:#}");
    assert_eq!(fake.open_polls(&arn), 0);
}

/// Starts the worker binary serving `arns` (the fake's endpoint, the adversary guest) with
/// its metrics on `addr`; `access_key_id` signs its calls.
fn start_worker(
    fake: &FakeSfn,
    arns: &[&str],
    addr: SocketAddr,
    access_key_id: &str,
    dir: &std::path::Path,
) -> std::process::Child {
    let activities: Vec<_> = arns
        .iter()
        .map(|arn| json!({"arn": arn, "component": path_value(&guest_path("adversary"))}))
        .collect();
    let config = dir.join("worker.toml");
    write_config(
        &config,
        json!({
            "worker": worker_table(fake, addr),
            "activity": activities,
        }),
    );
    worker_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", access_key_id)
        .env("SFN_WASM_WORKER_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `/readyz`'s status, or `None` while nothing listens on `addr`.
async fn readiness(addr: SocketAddr) -> Option<u16> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(get(addr, "/readyz").await.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_ready_within_seconds_of_start() {
    let fake = FakeSfn::start().await;
    // As the service does with no task waiting: every poll is held for the whole minute.
    fake.set_poll_hold(Duration::from_secs(60));
    let arn = fake.create_activity("idle");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    guest_path("adversary");
    let started = std::time::Instant::now();
    let mut child = start_worker(&fake, &[&arn], addr, "test", dir.path());
    // Start-up (loading the component: a compile if the cache is cold) comes first, and
    // takes what the machine makes it take: only a hang fails here.
    while readiness(addr).await != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready 60 s after start with an idle activity"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_at = std::time::Instant::now();
    let first_poll = fake
        .first_call(sfn_fake::Op::GetActivityTask)
        .expect("ready before any poll");
    // How long the first poll had been open at the fake when /readyz said ready.
    let held = ready_at.saturating_duration_since(first_poll);
    eprintln!(
        "ready {:.2} s after start (idle activity): the first poll came {:.2} s after start \
         and had been held {:.2} s",
        (ready_at - started).as_secs_f64(),
        (first_poll - started).as_secs_f64(),
        held.as_secs_f64()
    );
    assert_eq!(
        fake.calls(sfn_fake::Op::GetActivityTask),
        1,
        "the first poll is still open"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Ready because the poll stayed open POLL_HELD_OPEN (1 s, timed by the worker from just
    // before it sends the poll): not before half of it had passed at the fake (the other
    // half allows for the poll's way there), and soon after all of it (2 s more for the
    // scrape and a busy machine).
    assert!(
        held >= POLL_HELD_OPEN / 2,
        "ready after the poll was held only {held:?}"
    );
    assert!(
        held < POLL_HELD_OPEN + Duration::from_secs(2),
        "ready only after the poll was held {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_wrong_activity_arn_or_bad_credentials_is_never_ready() {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_secs(60));
    let known = fake.create_activity("known");
    let unknown = format!("{}never-created", sfn_fake::ARN_PREFIX);
    fake.refuse_access_key("refused-key");
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "a wrong activity ARN",
            vec![known.as_str(), unknown.as_str()],
            "test",
        ),
        ("bad credentials", vec![known.as_str()], "refused-key"),
    ];
    for (case, arns, key) in cases {
        let addr = free_addr();
        let mut child = start_worker(&fake, &arns, addr, key, dir.path());
        let watched = std::time::Instant::now();
        let mut answered = false;
        while watched.elapsed() < Duration::from_secs(4) {
            if let Some(status) = readiness(addr).await {
                answered = true;
                assert_eq!(status, 503, "{case}: ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(answered, "{case}: /readyz never answered");
        assert!(
            child.try_wait().unwrap().is_none(),
            "{case}: the worker exited"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A task token is a credential: at the most verbose log level, through tasks that succeed,
/// fail, log and heartbeat, no log line and no metric holds one (only its task id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_token_is_in_any_log_line_or_metric_even_at_trace_level() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("tokens");
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config = dir.path().join("worker.toml");
    write_config(
        &config,
        json!({
            "worker": with_drain_timeout(worker_table(&fake, addr), "5s"),
            "activity": [{
                "arn": arn,
                "component": path_value(&guest_path("adversary")),
                "heartbeat_interval": "1s",
            }],
        }),
    );
    let worker = LoggedWorker::start(&config, "trace");
    let inputs = [
        json!({"behaviour": "echo"}),
        json!({"behaviour": "fail", "error": "Test.Failure"}),
        json!({"behaviour": "log"}),
        json!({"behaviour": "heartbeat", "beats": 2}),
        json!({"behaviour": "panic"}),
    ];
    let tokens = run_all(&fake, &arn, &inputs).await;
    let (_, metrics) = get(addr, "/metrics").await;
    let log = worker.stop();
    assert!(
        log.lines().count() > 50,
        "the trace log is too short to mean anything:\n{log}"
    );
    for token in &tokens {
        // The fake's tokens end in 64 x's after their number: look for the whole token and
        // for its distinctive start.
        let start = &token[..token.len() - 60];
        for (what, text) in [("log", &*log), ("metrics", metrics.as_str())] {
            assert!(!text.contains(start), "a task token in the {what}:\n{text}");
        }
        assert!(
            log.contains(&sfn_wasm_worker::worker::sfn::task_id(token)),
            "no task id in the log"
        );
    }
    // Nor a secret key (the SDK's own debug lines name the access key id, redact the rest).
    assert!(
        !log.contains("AWS_SECRET") && log.contains("secret_access_key: \"** redacted **\""),
        "{log}"
    );
}

/// The `[worker]` table of a worker against `fake` serving metrics on `addr`.
fn worker_table(fake: &FakeSfn, addr: SocketAddr) -> serde_json::Value {
    json!({
        "region": "us-east-1",
        "endpoint_url": fake.endpoint,
        "metrics_addr": addr.to_string(),
    })
}

/// `worker` with its drain timeout set to `timeout`.
fn with_drain_timeout(mut worker: serde_json::Value, timeout: &str) -> serde_json::Value {
    worker["drain_timeout"] = json!(timeout);
    worker
}
