//! The worker against the Step Functions fake: polling, concurrency, errors and backoff,
//! heartbeats and cancellation, reporting, and graceful shutdown. Deterministic: the fake
//! decides what each call returns.

mod common;

use common::*;
use serde_json::{json, Value};
use sfn_fake::{FakeSfn, Fault, Op, TaskState};
use sfn_wasm_worker::config::units::HumanDuration;
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn activity(arn: &str, guest: &str) -> ActivityConfig {
    ActivityConfig::new(arn.to_string(), guest_path(guest))
}

/// The worker serving `activities` (named `test-worker-1`, draining for `drain_timeout`).
async fn start_worker(
    fake: &FakeSfn,
    activities: Vec<ActivityConfig>,
    drain_timeout: Duration,
) -> RunningWorker {
    let config = Config {
        worker: WorkerSection {
            name: Some("test-worker-1".into()),
            drain_timeout: Some(HumanDuration(drain_timeout)),
            ..Default::default()
        },
        activities,
    };
    RunningWorker::start(fake, config).await
}

fn order(id: &str) -> String {
    json!({"order_id": id, "items": [{"sku": "x", "quantity": 2, "unit_price_cents": 100}]})
        .to_string()
}

fn output_of(state: &TaskState) -> Value {
    match state {
        TaskState::Succeeded(output) => serde_json::from_str(output).unwrap(),
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test]
async fn tasks_succeed_and_fail_as_the_guest_says() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("orders");
    let good = fake.enqueue(&arn, &order("A-1"));
    let bad = fake.enqueue(&arn, r#"{"order_id": "A-2"}"#);
    let worker = start_worker(&fake, vec![activity(&arn, "rust-order")], WAIT).await;
    assert_eq!(
        output_of(&fake.wait_for_result(&good, WAIT).await)["total_cents"],
        200
    );
    match fake.wait_for_result(&bad, WAIT).await {
        TaskState::Failed { error, cause } => {
            assert_eq!(error, "Order.Invalid");
            assert!(cause.contains("items"), "{cause}");
        }
        other => panic!("expected failure, got {other:?}"),
    }
    let stats = worker.stop().await;
    assert_eq!((stats.succeeded, stats.failed), (1, 1));
}

#[tokio::test]
async fn empty_polls_are_not_errors_and_carry_the_worker_name() {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    let arn = fake.create_activity("idle");
    let worker = start_worker(&fake, vec![activity(&arn, "rust-order")], WAIT).await;
    fake.wait_until(WAIT, "several empty polls", |f| {
        f.calls(Op::GetActivityTask) >= 5
    })
    .await;
    let stats = worker.stop().await;
    assert_eq!(stats.poll_errors, 0);
    assert!(stats.polls >= 4);
    assert!(fake
        .worker_names()
        .iter()
        .all(|name| name == "test-worker-1"));
}

#[tokio::test]
async fn concurrency_is_bounded_and_a_poll_always_holds_a_free_slot() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("bounded");
    let tokens: Vec<String> = (0..8)
        .map(|_| fake.enqueue(&arn, &json!({"behaviour": "sleep", "ms": 150}).to_string()))
        .collect();
    let mut config = activity(&arn, "adversary");
    config.max_concurrency = 3;
    config.pollers = 2;
    let worker = start_worker(&fake, vec![config], WAIT).await;
    for token in &tokens {
        fake.wait_for_result(token, WAIT).await;
    }
    worker.stop().await;
    assert!(fake.max_running(&arn) >= 2, "tasks never overlapped");
    // The fake counts a task from its hand-out to its report: the 3 slots' guests, and at
    // most 3 reports in flight after their guests freed their slots.
    assert!(
        fake.max_running(&arn) <= 6,
        "{} tasks handed out and unreported at once",
        fake.max_running(&arn)
    );
    // Open polls plus running guests never exceeded the slots (plus the reports' bound):
    // no task is ever held unstarted.
    assert!(
        fake.max_busy(&arn) <= 6,
        "{} polls+tasks at once",
        fake.max_busy(&arn)
    );
}

/// A task's slot is freed when its guest ends, not when its report lands: the next task is
/// polled for and run while the report is in flight; and reports in flight are bounded by
/// `max_concurrency` (a slow Step Functions holds the slots back instead of piling up).
#[tokio::test]
async fn the_slot_is_freed_when_the_guest_ends_and_reports_in_flight_are_bounded() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("slot-before-report");
    fake.inject(
        Op::SendTaskSuccess,
        Fault::Slow(Duration::from_millis(600)),
        3,
    );
    let tokens: Vec<String> = (0..3)
        .map(|i| fake.enqueue(&arn, &json!({"behaviour": "echo", "i": i}).to_string()))
        .collect();
    let mut config = activity(&arn, "adversary");
    config.max_concurrency = 1;
    let worker = start_worker(&fake, vec![config], WAIT).await;
    for token in &tokens {
        assert!(matches!(
            fake.wait_for_result(token, WAIT).await,
            TaskState::Succeeded(_)
        ));
    }
    let stats = worker.stop().await;
    assert_eq!(stats.report_errors, 0, "{stats:?}");
    let [first, second, third] = [0, 1, 2].map(|i| fake.task(&tokens[i]));
    let (first_reported, second_handed_out, third_handed_out) = (
        first.ended_at.unwrap(),
        second.handed_out_at.unwrap(),
        third.handed_out_at.unwrap(),
    );
    assert!(
        second_handed_out < first_reported,
        "the second task waited for the first one's report: handed out {:?} after it",
        second_handed_out - first_reported
    );
    // With one slot, one report in flight: the second task's guest ends and waits (holding
    // the slot) for the first report, so the third is polled for only after it.
    assert!(
        third_handed_out >= first_reported,
        "a third task was taken while two reports were in flight"
    );
}

#[tokio::test]
async fn an_unknown_activity_stops_and_the_worker_exits_with_an_error_when_none_is_left() {
    let fake = FakeSfn::start().await;
    let missing = format!("{}never-created", sfn_fake::ARN_PREFIX);
    let worker = start_worker(&fake, vec![activity(&missing, "rust-order")], WAIT).await;
    let result = tokio::time::timeout(WAIT, worker.handle)
        .await
        .expect("worker kept running")
        .unwrap();
    let err = format!("{:#}", result.unwrap_err());
    assert!(err.contains("no activity left"), "{err}");
}

#[tokio::test]
async fn an_unknown_activity_does_not_stop_the_others() {
    let fake = FakeSfn::start().await;
    let missing = format!("{}never-created", sfn_fake::ARN_PREFIX);
    let arn = fake.create_activity("alive");
    let worker = start_worker(
        &fake,
        vec![
            activity(&missing, "rust-order"),
            activity(&arn, "rust-order"),
        ],
        WAIT,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = fake.enqueue(&arn, &order("B-1"));
    output_of(&fake.wait_for_result(&token, WAIT).await);
    assert!(!worker.handle.is_finished());
    worker.stop().await;
}

#[tokio::test]
async fn poll_errors_back_off_without_a_hot_loop_then_recover() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("flaky");
    fake.inject(Op::GetActivityTask, Fault::Throttle, 1_000);
    let started = Instant::now();
    let worker = start_worker(&fake, vec![activity(&arn, "rust-order")], WAIT).await;
    // The SDK retries each call (standard mode) before the worker sees an error and backs off.
    let stats = worker.stats.clone();
    fake.wait_until(WAIT, "three failed polls", |_| {
        stats.snapshot().poll_errors >= 3
    })
    .await;
    let rate = fake.calls(Op::GetActivityTask) as f64 / started.elapsed().as_secs_f64();
    assert!(
        rate <= 10.0,
        "{rate:.1} polls/s while throttled: a hot loop"
    );
    fake.clear_faults();
    // 5xx, a slow answer and a reset connection are retried too.
    fake.inject(Op::GetActivityTask, Fault::ServerError, 2);
    fake.inject(Op::GetActivityTask, Fault::Reset, 1);
    fake.inject(
        Op::GetActivityTask,
        Fault::Slow(Duration::from_millis(300)),
        1,
    );
    let token = fake.enqueue(&arn, &order("C-1"));
    output_of(&fake.wait_for_result(&token, Duration::from_secs(60)).await);
    worker.stop().await;
}

#[tokio::test]
async fn activity_worker_limit_exceeded_is_retried() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("limited");
    fake.inject(
        Op::GetActivityTask,
        Fault::Error("ActivityWorkerLimitExceeded"),
        4,
    );
    let token = fake.enqueue(&arn, &order("D-1"));
    let worker = start_worker(&fake, vec![activity(&arn, "rust-order")], WAIT).await;
    output_of(&fake.wait_for_result(&token, Duration::from_secs(60)).await);
    assert!(worker.stats.snapshot().poll_errors >= 1);
    worker.stop().await;
}

#[tokio::test]
async fn heartbeats_are_sent_on_the_interval_and_when_the_guest_asks() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("beating");
    let mut config = activity(&arn, "adversary");
    config.heartbeat_interval = Some(HumanDuration(Duration::from_secs(1)));
    let worker = start_worker(&fake, vec![config], WAIT).await;
    // Ticks at 1, 2 and 3 s: 2 heartbeats are due with a full interval and a half to spare.
    let slow = fake.enqueue(
        &arn,
        &json!({"behaviour": "sleep", "ms": 3_500}).to_string(),
    );
    output_of(&fake.wait_for_result(&slow, WAIT).await);
    assert!(
        fake.task(&slow).heartbeats >= 2,
        "{} interval heartbeats in 3.5 s (interval 1 s)",
        fake.task(&slow).heartbeats
    );

    // The guest asks for 5 in a row: the first is sent, the rest are rate-limited.
    let eager = fake.enqueue(
        &arn,
        &json!({"behaviour": "heartbeat", "count": 5}).to_string(),
    );
    assert_eq!(
        output_of(&fake.wait_for_result(&eager, WAIT).await),
        json!({"ok": 5, "error": null})
    );
    assert_eq!(fake.task(&eager).heartbeats, 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_timed_out_heartbeat_interrupts_a_spinning_guest_and_reports_nothing() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("spinning");
    let mut config = activity(&arn, "adversary");
    config.heartbeat_interval = Some(HumanDuration(Duration::from_secs(1)));
    config.timeout = Some(HumanDuration(Duration::from_secs(120)));
    let worker = start_worker(&fake, vec![config], WAIT).await;
    let token = fake.enqueue(&arn, &json!({"behaviour": "loop"}).to_string());
    fake.wait_until(WAIT, "the task to start", |f| {
        f.task(&token).state == TaskState::Running
    })
    .await;
    fake.time_out(&token);
    let started = Instant::now();
    fake.wait_until(WAIT, "the guest to be interrupted", |_| {
        worker.stats.snapshot().abandoned == 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(fake.task(&token).reports, 0, "a gone task was reported");
    // The worker carries on.
    let next = fake.enqueue(&arn, &json!({"behaviour": "echo"}).to_string());
    output_of(&fake.wait_for_result(&next, WAIT).await);
    worker.stop().await;
}

/// LocalStack's way of closing a task (a state timeout, StopExecution): the token that was
/// accepted becomes `InvalidToken`. The guest must stop and its only slot serve the next task.
#[tokio::test]
async fn invalid_token_after_an_accepted_heartbeat_stops_the_guest_and_frees_its_slot() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("closed-by-localstack");
    let interval = Duration::from_secs(1);
    let mut config = activity(&arn, "adversary");
    config.max_concurrency = 1;
    config.heartbeat_interval = Some(HumanDuration(interval));
    config.timeout = Some(HumanDuration(Duration::from_secs(120)));
    let worker = start_worker(&fake, vec![config], WAIT).await;
    let token = fake.enqueue(&arn, &json!({"behaviour": "loop"}).to_string());
    fake.wait_until(WAIT, "a heartbeat to be accepted", |f| {
        f.task(&token).heartbeats >= 1
    })
    .await;
    fake.close(&token);
    let closed = Instant::now();
    let queued_behind = fake.enqueue(&arn, &json!({"behaviour": "echo"}).to_string());
    fake.wait_until(WAIT, "the guest to be interrupted", |_| {
        worker.stats.snapshot().abandoned == 1
    })
    .await;
    let interrupted_after = closed.elapsed();
    output_of(&fake.wait_for_result(&queued_behind, WAIT).await);
    // The next tick (at most an interval away) is refused and stops the guest: 3 intervals
    // and 2 s allow for a slow machine; unnoticed, it would spin to its 120 s timeout.
    let bound = interval * 3 + Duration::from_secs(2);
    assert!(
        interrupted_after < bound,
        "the guest ran {interrupted_after:?} after its task closed (interval {interval:?})"
    );
    assert_eq!(fake.task(&token).reports, 0, "a closed task was reported");
    let stats = worker.stop().await;
    assert_eq!((stats.abandoned, stats.succeeded), (1, 1));
}

#[tokio::test]
async fn invalid_token_on_a_heartbeat_is_logged_and_the_task_goes_on() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("localstack-like");
    fake.inject(Op::SendTaskHeartbeat, Fault::Error("InvalidToken"), 10);
    let mut config = activity(&arn, "adversary");
    config.heartbeat_interval = Some(HumanDuration(Duration::from_secs(1)));
    let worker = start_worker(&fake, vec![config], WAIT).await;
    // The first tick comes at 1 s: 1.5 s to spare.
    let token = fake.enqueue(
        &arn,
        &json!({"behaviour": "sleep", "ms": 2_500}).to_string(),
    );
    output_of(&fake.wait_for_result(&token, WAIT).await);
    assert!(fake.calls(Op::SendTaskHeartbeat) >= 1);
    worker.stop().await;
}

#[tokio::test]
async fn throttled_and_failing_reports_are_retried_and_land() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("reporting");
    fake.inject(Op::SendTaskSuccess, Fault::Throttle, 4);
    fake.inject(Op::SendTaskSuccess, Fault::ServerError, 2);
    fake.inject(Op::SendTaskSuccess, Fault::Reset, 1);
    fake.inject(Op::SendTaskFailure, Fault::Throttle, 3);
    let good = fake.enqueue(&arn, &order("E-1"));
    let bad = fake.enqueue(&arn, r#"{"order_id": ""}"#);
    let worker = start_worker(&fake, vec![activity(&arn, "rust-order")], WAIT).await;
    output_of(&fake.wait_for_result(&good, Duration::from_secs(60)).await);
    assert!(matches!(
        fake.wait_for_result(&bad, Duration::from_secs(60)).await,
        TaskState::Failed { .. }
    ));
    assert!(fake.calls(Op::SendTaskSuccess) >= 8);
    let stats = worker.stop().await;
    assert_eq!(
        (stats.succeeded, stats.failed, stats.report_errors),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn a_report_for_a_timed_out_task_is_counted_lost_and_not_retried() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("late");
    let worker = start_worker(&fake, vec![activity(&arn, "adversary")], WAIT).await;
    let token = fake.enqueue(&arn, &json!({"behaviour": "sleep", "ms": 500}).to_string());
    fake.wait_until(WAIT, "the task to start", |f| {
        f.task(&token).state == TaskState::Running
    })
    .await;
    fake.time_out(&token);
    fake.wait_until(WAIT, "the lost report", |_| {
        worker.stats.snapshot().reports_refused == 1
    })
    .await;
    assert_eq!(fake.calls(Op::SendTaskSuccess), 1);
    worker.stop().await;
}

#[tokio::test]
async fn shutdown_with_tasks_in_flight_loses_none() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("draining");
    let mut config = activity(&arn, "adversary");
    config.max_concurrency = 4;
    config.pollers = 4;
    let worker = start_worker(&fake, vec![config], WAIT).await;
    let tokens: Vec<String> = (0..4)
        .map(|i| {
            fake.enqueue(
                &arn,
                &json!({"behaviour": "sleep", "ms": 800, "i": i}).to_string(),
            )
        })
        .collect();
    fake.wait_until(WAIT, "4 running tasks", |f| f.running(&arn) == 4)
        .await;
    let stats = worker.stop().await;
    for token in &tokens {
        output_of(&fake.task(token).state);
    }
    assert_eq!(stats.succeeded, 4);
}

#[tokio::test]
async fn a_task_arriving_on_an_open_poll_while_draining_is_run() {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_secs(3));
    let arn = fake.create_activity("late-arrival");
    let worker = start_worker(&fake, vec![activity(&arn, "rust-order")], WAIT).await;
    fake.wait_until(WAIT, "an open poll", |f| f.open_polls(&arn) == 1)
        .await;
    worker.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = fake.enqueue(&arn, &order("F-1"));
    let stats = tokio::time::timeout(WAIT, worker.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    output_of(&fake.task(&token).state);
    assert_eq!(stats.succeeded, 1);
    assert_eq!(
        fake.calls(Op::GetActivityTask),
        1,
        "a new poll started after shutdown"
    );
}

#[tokio::test]
async fn tasks_still_running_at_the_drain_timeout_fail_with_shutting_down() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("stuck");
    let worker = start_worker(
        &fake,
        vec![activity(&arn, "adversary")],
        Duration::from_millis(500),
    )
    .await;
    let token = fake.enqueue(&arn, &json!({"behaviour": "loop"}).to_string());
    fake.wait_until(WAIT, "the task to start", |f| {
        f.task(&token).state == TaskState::Running
    })
    .await;
    let started = Instant::now();
    worker.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain took {:?}",
        started.elapsed()
    );
    match fake.task(&token).state {
        TaskState::Failed { error, .. } => assert_eq!(error, "Worker.ShuttingDown"),
        other => panic!("expected Worker.ShuttingDown, got {other:?}"),
    }
}

#[tokio::test]
async fn tenants_get_their_own_component_and_limits() {
    let fake = FakeSfn::start().await;
    let orders = fake.create_activity("tenant-orders");
    let tools = fake.create_activity("tenant-tools");
    let mut tight = activity(&tools, "adversary");
    tight.memory_limit = Some(sfn_wasm_worker::config::units::ByteSize(16 << 20));
    tight
        .capabilities
        .wasi
        .env
        .insert("TENANT".into(), "tools".into());
    let worker = start_worker(&fake, vec![activity(&orders, "rust-order"), tight], WAIT).await;
    let order_token = fake.enqueue(&orders, &order("G-1"));
    let bomb = fake.enqueue(&tools, &json!({"behaviour": "memory-bomb"}).to_string());
    let env = fake.enqueue(&tools, &json!({"behaviour": "escape"}).to_string());
    output_of(&fake.wait_for_result(&order_token, WAIT).await);
    match fake.wait_for_result(&bomb, WAIT).await {
        TaskState::Failed { error, .. } => assert_eq!(error, "Wasm.OutOfMemory"),
        other => panic!("expected Wasm.OutOfMemory, got {other:?}"),
    }
    assert_eq!(
        output_of(&fake.wait_for_result(&env, WAIT).await)["env"],
        json!([["TENANT", "tools"]])
    );
    worker.stop().await;
}

/// Two tenants in one worker, running the same component side by side: the one whose
/// activity grants an env var, a directory and an outbound origin sees them; the other sees
/// none of them, by any path. Neither may open a socket, whatever either activity grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_sees_nothing_another_activity_in_the_process_was_granted() {
    let fake = FakeSfn::start().await;
    let granted_arn = fake.create_activity("tenant-granted");
    let bare_arn = fake.create_activity("tenant-bare");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret.txt");
    std::fs::write(&secret_file, "secret text").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut granted = activity(&granted_arn, "adversary");
    let capabilities = &mut granted.capabilities;
    capabilities
        .wasi
        .env
        .insert("SECRET".into(), "hunter2".into());
    capabilities
        .wasi
        .read_only_dirs
        .insert(dir.path().to_path_buf(), "/data".into());
    capabilities.outbound.allowed_hosts = vec![format!("http://127.0.0.1:{port}").parse().unwrap()];
    let mut bare = activity(&bare_arn, "adversary");
    (granted.max_concurrency, bare.max_concurrency) = (4, 4);
    let worker = start_worker(&fake, vec![granted, bare], WAIT).await;

    let host_path = secret_file.to_str().unwrap();
    let probes = [
        json!({"behaviour": "escape", "path": "/data/secret.txt"}),
        json!({"behaviour": "read-file", "path": "/data/secret.txt"}),
        json!({"behaviour": "read-file", "path": host_path}),
        json!({"behaviour": "sockets", "port": port}),
    ];
    // Interleaved, so the two tenants' tasks share the process, the pool and its slots.
    let mut sent = Vec::new();
    for _round in 0..8 {
        for probe in &probes {
            for arn in [&granted_arn, &bare_arn] {
                let token = fake.enqueue(arn, &probe.to_string());
                sent.push((
                    arn == &granted_arn,
                    probe["behaviour"].clone(),
                    probe["path"].clone(),
                    token,
                ));
            }
        }
    }
    for (is_granted, behaviour, path, token) in sent {
        let state = fake.wait_for_result(&token, WAIT).await;
        let what = format!(
            "{} {behaviour} {path}: {state:?}",
            if is_granted { "granted" } else { "bare" }
        );
        match (behaviour.as_str().unwrap(), is_granted) {
            ("escape", true) => {
                let output = output_of(&state);
                assert_eq!(output["env"], json!([["SECRET", "hunter2"]]), "{what}");
                assert_eq!(output["file"], json!({"Ok": "secret text"}), "{what}");
            }
            ("escape", false) => {
                let output = output_of(&state);
                assert_eq!(output["env"], json!([]), "{what}");
                assert!(output["file"]["Err"].is_string(), "{what}");
            }
            ("read-file", true) if path == "/data/secret.txt" => {
                assert_eq!(output_of(&state), json!({"text": "secret text"}), "{what}")
            }
            ("read-file", _) => match &state {
                TaskState::Failed { error, .. } => assert_eq!(error, "Test.Io", "{what}"),
                other => panic!("read a file its activity did not grant: {other:?} ({what})"),
            },
            ("sockets", _) => {
                let output = output_of(&state);
                for use_of_sockets in ["tcp", "udp", "lookup"] {
                    assert_ne!(output[use_of_sockets], "ok", "{what}");
                }
            }
            (other, _) => unreachable!("{other}"),
        }
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a guest connected"
    );
    worker.stop().await;
}

/// `/readyz`'s body from the worker serving it on `addr`.
async fn readyz(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /readyz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string()
}

/// The worker binary: a first SIGTERM starts the drain (an open poll is awaited, a running
/// task may finish); a second one stops at once, failing the running task with
/// Worker.ShuttingDown, without waiting for the open poll (held 60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_fails_running_tasks() {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_secs(60));
    let arn = fake.create_activity("hurried");
    let token = fake.enqueue(
        &arn,
        &json!({"behaviour": "sleep", "ms": 60_000}).to_string(),
    );
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = worker_command()
        .args(["run", "--activity-arn", &arn, "--component"])
        .arg(guest_path("adversary"))
        .args([
            "--max-concurrency",
            "2",
            "--pollers",
            "2",
            "--timeout",
            "120s",
        ])
        .args([
            "--drain-timeout",
            "60s",
            "--endpoint-url",
            &fake.endpoint,
            "--region",
            "us-east-1",
            "--metrics-addr",
            &metrics_addr.to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    fake.wait_until(WAIT, "the task to run and a poll to be open", |f| {
        f.task(&token).state == TaskState::Running && f.open_polls(&arn) >= 1
    })
    .await;
    send_signal("TERM", child.id());
    // The first signal was handled once /readyz says draining: a second one sent before
    // that could merge with it into one.
    let signalled = Instant::now();
    while readyz(metrics_addr).await != "not ready: draining\n" {
        assert!(
            signalled.elapsed() < WAIT,
            "not draining {WAIT:?} after a SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Draining, not stopping: still running a while later, its task not failed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal must drain, not stop"
    );
    assert_eq!(fake.task(&token).state, TaskState::Running);
    send_signal("TERM", child.id());
    let status = wait_for_exit(&mut child, Duration::from_secs(15))
        .await
        .expect("still running after a second signal");
    assert!(status.success(), "{status}");
    match fake.task(&token).state {
        TaskState::Failed { error, .. } => assert_eq!(error, "Worker.ShuttingDown"),
        other => panic!("expected Worker.ShuttingDown, got {other:?}"),
    }
}

/// An activity with `role_arn` calls Step Functions with credentials from STS AssumeRole
/// (here the fake's), with its external id; an activity without one, with the worker's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_with_a_role_calls_with_the_roles_credentials() {
    let fake = FakeSfn::start().await;
    let own = fake.create_activity("own-account");
    let tenant = fake.create_activity("tenant-account");
    let role = "arn:aws:iam::222222222222:role/tenant-b";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    let guest = guest_path("adversary");
    write_config(
        &config,
        json!({
            "worker": {"region": "us-east-1", "endpoint_url": fake.endpoint},
            "activity": [
                {"arn": own, "component": path_value(&guest)},
                {
                    "arn": tenant,
                    "component": path_value(&guest),
                    "role_arn": role,
                    "external_id": "tenant-b-secret",
                },
            ],
        }),
    );
    let mut child = worker_command()
        .args(["run", "--config"])
        .arg(&config)
        .env("AWS_ACCESS_KEY_ID", "AKIDWORKER")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let echo = json!({"behaviour": "echo"}).to_string();
    let (mine, theirs) = (fake.enqueue(&own, &echo), fake.enqueue(&tenant, &echo));
    let results = [
        fake.wait_for_result(&mine, WAIT).await,
        fake.wait_for_result(&theirs, WAIT).await,
    ];
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        results.iter().all(|r| matches!(r, TaskState::Succeeded(_))),
        "{results:?}"
    );
    let assumed = FakeSfn::assumed_key_id(role);
    let only =
        |signers: Vec<String>, key: &str| !signers.is_empty() && signers.iter().all(|s| s == key);
    assert!(
        only(fake.poll_signers(&own), "AKIDWORKER"),
        "{:?}",
        fake.poll_signers(&own)
    );
    assert!(
        only(fake.poll_signers(&tenant), &assumed),
        "{:?}",
        fake.poll_signers(&tenant)
    );
    assert!(
        only(fake.task(&mine).signed_by, "AKIDWORKER"),
        "{:?}",
        fake.task(&mine).signed_by
    );
    assert!(
        only(fake.task(&theirs).signed_by, &assumed),
        "{:?}",
        fake.task(&theirs).signed_by
    );
    assert!(fake
        .assumed_roles()
        .contains(&(role.to_string(), Some("tenant-b-secret".to_string()))));
}

/// Step Functions answers that break the API's promises (a body that is not JSON, a task
/// without a token, unexpected status codes on polls and reports, a task input that is not
/// JSON) are logged and retried: no panic, every task reported once, and no slot lost (the
/// worker still runs `max_concurrency` tasks at once afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_break_the_api_lose_no_task_and_no_slot() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("broken-answers");
    fake.inject(Op::GetActivityTask, Fault::Malformed, 2);
    fake.inject(Op::GetActivityTask, Fault::MissingToken, 2);
    fake.inject(Op::GetActivityTask, Fault::Status(418), 1);
    fake.inject(Op::GetActivityTask, Fault::Status(302), 1);
    fake.inject(Op::SendTaskSuccess, Fault::Malformed, 1);
    fake.inject(Op::SendTaskSuccess, Fault::Status(503), 1);
    fake.inject(Op::SendTaskFailure, Fault::Status(418), 1);
    let echo = fake.enqueue(&arn, &json!({"behaviour": "echo"}).to_string());
    let not_json = fake.enqueue(&arn, "this is { not JSON");
    let mut config = activity(&arn, "adversary");
    config.max_concurrency = 2;
    config.pollers = 1;
    let worker = start_worker(&fake, vec![config], WAIT).await;
    assert!(matches!(
        fake.wait_for_result(&echo, Duration::from_secs(60)).await,
        TaskState::Succeeded(_)
    ));
    match fake
        .wait_for_result(&not_json, Duration::from_secs(60))
        .await
    {
        TaskState::Failed { error, .. } => assert_eq!(error, "Task.InvalidInput"),
        other => panic!("expected Task.InvalidInput, got {other:?}"),
    }
    // Both slots are still there: two sleeping tasks overlap.
    let sleep = Duration::from_secs(3);
    let sleepers: [String; 2] = std::array::from_fn(|_| {
        let input = json!({"behaviour": "sleep", "ms": sleep.as_millis() as u64});
        fake.enqueue(&arn, &input.to_string())
    });
    for token in &sleepers {
        fake.wait_for_result(token, WAIT).await;
    }
    let stats = worker.stop().await;
    for token in [&echo, &not_json].into_iter().chain(&sleepers) {
        assert!(fake.task(token).reports >= 1);
    }
    // Both slots are there: the two sleepers ran side by side, the second handed out while
    // the first slept. With one slot it could only be polled for once the first guest
    // had ended, a whole sleep (3 s) later; half of one allows for a slow poll.
    let handed_out = sleepers
        .each_ref()
        .map(|token| fake.task(token).handed_out_at.unwrap());
    let apart = handed_out[0].max(handed_out[1]) - handed_out[0].min(handed_out[1]);
    assert!(
        apart < sleep / 2,
        "a slot was lost: the sleepers ({sleep:?} each) were handed out {apart:?} apart"
    );
    assert_eq!(stats.report_errors, 0, "{stats:?}");
}

/// `instance_reuse` through the worker: one slot's tasks share a warm instance up to the
/// limit (its module state counts them), another activity of the same component never
/// sees it, and a trap drops it; every task is still reported once.
#[tokio::test]
async fn warm_instances_serve_their_activitys_tasks_in_turn_up_to_instance_reuse() {
    let fake = FakeSfn::start().await;
    let (warm_arn, other_arn) = (fake.create_activity("warm"), fake.create_activity("other"));
    let count = json!({"behaviour": "count"}).to_string();
    let inputs = [
        &count,
        &count,
        &count,
        &count,
        &json!({"behaviour": "panic"}).to_string(),
        &count,
    ];
    let mut warm = activity(&warm_arn, "adversary");
    warm.max_concurrency = 1;
    warm.instance_reuse = Some(3);
    let mut other = activity(&other_arn, "adversary");
    other.max_concurrency = 1;
    other.instance_reuse = Some(3);
    let worker = start_worker(&fake, vec![warm, other], WAIT).await;
    let mut counts = Vec::new();
    for input in inputs {
        let token = fake.enqueue(&warm_arn, input);
        match fake.wait_for_result(&token, WAIT).await {
            TaskState::Succeeded(output) => {
                counts.push(output_of(&TaskState::Succeeded(output))["count"].as_u64())
            }
            TaskState::Failed { error, .. } => {
                assert_eq!(error, "Wasm.Trap");
                counts.push(None);
            }
            other => panic!("unexpected {other:?}"),
        }
        if counts.len() == 2 {
            let theirs = fake.enqueue(&other_arn, &count);
            let output = output_of(&fake.wait_for_result(&theirs, WAIT).await);
            assert_eq!(
                output["count"], 1,
                "another activity saw this one's instance"
            );
        }
    }
    worker.stop().await;
    assert_eq!(counts, [Some(1), Some(2), Some(3), Some(1), None, Some(1)]);
}
