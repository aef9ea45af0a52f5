//! Against LocalStack: a task closed while its guest runs (a state timing out under
//! `HeartbeatSeconds`, a `StopExecution`) stops the guest within a few heartbeat intervals
//! (its next heartbeat is refused), not when its 30 s sleep or 60 s timeout would end, so
//! the worker's only slot serves the execution queued behind it.
//!
//! LocalStack answers heartbeats of a closed task with `InvalidToken` (AWS says
//! `TaskTimedOut`): the worker reads it as "closed" once an earlier heartbeat was accepted.
//! LocalStack runs on port 4598 here (tests/localstack.rs uses 4599).

mod common;

use aws_sdk_sfn::types::ExecutionStatus;
use common::localstack::{
    create_activity, create_state_machine, wait_for_execution, LocalStack, WorkerProcess,
};
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: &str = "4598";
/// The worker's `heartbeat_interval`.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// The most a guest may run on after its task closed: a heartbeat at most an interval away
/// is refused and stops it; LocalStack still accepts the first one after a StopExecution
/// (measured: stopped ~2.0 s after, against ~0.7 s for a timed-out state), so 2 intervals,
/// and 3 s more for the round trip, the interrupt and the log line on a slow machine. Far
/// below the 30 s the guest would sleep if the closed task went unnoticed.
const STOP_BOUND: Duration = Duration::from_secs(2 * HEARTBEAT_INTERVAL.as_secs() + 3);

fn machine(
    activity: &str,
    timeout_seconds: u32,
    heartbeat_seconds: Option<u32>,
) -> serde_json::Value {
    let mut task = json!({"Type": "Task", "Resource": activity, "TimeoutSeconds": timeout_seconds, "End": true});
    if let Some(seconds) = heartbeat_seconds {
        task["HeartbeatSeconds"] = json!(seconds);
    }
    json!({"StartAt": "Work", "States": {"Work": task}})
}

/// The heartbeats Step Functions has accepted from the worker serving `/metrics` on `addr`.
async fn heartbeats_accepted(addr: SocketAddr) -> f64 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .lines()
        .find_map(|line| {
            line.strip_prefix("sfn_worker_heartbeats_total{result=\"sent\"}")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// How many tasks the worker has logged as abandoned so far.
fn abandoned(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("task finished") && line.contains("abandoned"))
        .count()
}

/// Waits until the worker has abandoned `count` tasks (the last one's guest stopped), checks
/// it happened within [`STOP_BOUND`] of `closed_at`, then that the execution `behind`
/// (queued on the one slot) succeeded.
async fn assert_guest_stopped_and_slot_freed(
    what: &str,
    count: usize,
    closed_at: Instant,
    log: &impl Fn() -> String,
    client: &aws_sdk_sfn::Client,
    behind: &str,
) {
    while abandoned(&log()) < count {
        assert!(
            closed_at.elapsed() < Duration::from_secs(10),
            "{what}: the guest was never stopped\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_after = closed_at.elapsed();
    println!("{what}: guest stopped {stopped_after:?} after its task closed");
    assert!(
        stopped_after <= STOP_BOUND,
        "{what}: guest stopped {stopped_after:?} after its task closed (bound {STOP_BOUND:?})\n{}",
        log()
    );
    let next = wait_for_execution(client, behind).await;
    assert_eq!(
        next.status,
        ExecutionStatus::Succeeded,
        "{what}: the execution behind: {next:?}\n{}",
        log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_task_frees_the_only_slot_within_a_heartbeat_interval() {
    let adversary = guest_path("adversary");
    let _localstack = LocalStack::start(PORT);
    let endpoint = format!("http://127.0.0.1:{PORT}");
    let client = aws_sdk_sfn::Client::new(&sfn_fake::local_sdk_config(&endpoint).await);
    let activity = create_activity(&client, "closed").await;
    // HeartbeatSeconds 5 against a 1 s interval: a heartbeat may come 4 s late and the state
    // still ends by its TimeoutSeconds (States.Timeout), not States.HeartbeatTimeout.
    let timing_out =
        create_state_machine(&client, "times-out", &machine(&activity, 6, Some(5))).await;
    let stoppable =
        create_state_machine(&client, "stoppable", &machine(&activity, 60, Some(10))).await;
    let queued = create_state_machine(&client, "queued", &machine(&activity, 60, None)).await;

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("worker.log");
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let worker = worker_command()
        .args(["run", "--activity-arn", &activity, "--component"])
        .arg(&adversary)
        .args([
            "--max-concurrency",
            "1",
            "--heartbeat-interval",
            "1s",
            "--timeout",
            "60s",
        ])
        .args([
            "--endpoint-url",
            &endpoint,
            "--region",
            "us-east-1",
            "--drain-timeout",
            "5s",
            "--metrics-addr",
            &metrics_addr.to_string(),
        ])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("starting the worker");
    let worker = WorkerProcess(worker);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let start = |machine: &str, input: serde_json::Value| {
        client
            .start_execution()
            .state_machine_arn(machine)
            .input(input.to_string())
            .send()
    };
    let long_guest = json!({"behaviour": "sleep", "ms": 30_000});
    let quick_guest = json!({"behaviour": "echo"});

    // 1. The state times out after 6 s; its guest would sleep 30 s.
    let first = start(&timing_out, long_guest.clone())
        .await
        .unwrap()
        .execution_arn;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let behind = start(&queued, quick_guest.clone())
        .await
        .unwrap()
        .execution_arn;
    let ended = wait_for_execution(&client, &first).await;
    let closed_at = Instant::now();
    assert_eq!(
        (ended.status.clone(), ended.error.as_deref()),
        (ExecutionStatus::Failed, Some("States.Timeout")),
        "{ended:?}\n{}",
        log()
    );
    assert_guest_stopped_and_slot_freed("timed-out state", 1, closed_at, &log, &client, &behind)
        .await;

    // 2. StopExecution once a heartbeat of the 30 s guest's task was accepted (before that,
    // LocalStack's InvalidToken would not tell a closed task from one without
    // HeartbeatSeconds, and the guest would rightly go on).
    let accepted_before = heartbeats_accepted(metrics_addr).await;
    let second = start(&stoppable, long_guest).await.unwrap().execution_arn;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let behind = start(&queued, quick_guest).await.unwrap().execution_arn;
    let waited = Instant::now();
    while heartbeats_accepted(metrics_addr).await <= accepted_before {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "no heartbeat of the second task was accepted\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .stop_execution()
        .execution_arn(&second)
        .send()
        .await
        .unwrap();
    let stopped_at = Instant::now();
    assert_guest_stopped_and_slot_freed("StopExecution", 2, stopped_at, &log, &client, &behind)
        .await;
    assert!(
        !log().contains("result was refused"),
        "a closed task was reported\n{}",
        log()
    );
    // Nothing is in flight: the worker is killed when `worker` drops (a drain would wait
    // for the open poll, up to 60 s).
    drop(worker);
}
