//! Against LocalStack: a SIGKILLed worker reports nothing, so its task waits for the state's
//! `HeartbeatSeconds`; then the state machine's Retry hands it to another worker, and the
//! execution succeeds well before its `TimeoutSeconds`. This is why long tasks want
//! `HeartbeatSeconds` and a `heartbeat_interval` shorter than it (README "Shutdown").
//! LocalStack runs on port 4597 here (the other LocalStack tests use 4598 and 4599).

mod common;

use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use common::localstack::{
    create_activity, create_state_machine, wait_for_execution, LocalStack, WorkerProcess,
};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const PORT: &str = "4597";
const HEARTBEAT_SECONDS: u64 = 3;
const TIMEOUT_SECONDS: u64 = 60;

fn start_worker(activity: &str, endpoint: &str, log: &std::path::Path) -> WorkerProcess {
    let child = worker_command()
        .args(["run", "--activity-arn", activity, "--component"])
        .arg(guest_path("adversary"))
        .args(["--max-concurrency", "1", "--heartbeat-interval", "1s"])
        .args(["--timeout", "30s", "--endpoint-url", endpoint])
        .args(["--region", "us-east-1"])
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("starting the worker");
    WorkerProcess(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_task_is_retried_after_its_heartbeat_timeout() {
    let _localstack = LocalStack::start(PORT);
    let endpoint = format!("http://127.0.0.1:{PORT}");
    let client = aws_sdk_sfn::Client::new(&sfn_fake::local_sdk_config(&endpoint).await);
    let activity = create_activity(&client, "sigkill").await;
    let definition = json!({"StartAt": "Work", "States": {"Work": {
        "Type": "Task", "Resource": activity, "End": true,
        "TimeoutSeconds": TIMEOUT_SECONDS, "HeartbeatSeconds": HEARTBEAT_SECONDS,
        "Retry": [{"ErrorEquals": ["States.Timeout", "States.HeartbeatTimeout"],
                   "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1.0}]}}});
    let machine = create_state_machine(&client, "sigkill", &definition).await;

    let dir = tempfile::tempdir().unwrap();
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut first = start_worker(&activity, &endpoint, &first_log);
    let started = Instant::now();
    let execution = client
        .start_execution()
        .state_machine_arn(&machine)
        .input(json!({"behaviour": "sleep", "ms": 4_000}).to_string())
        .send()
        .await
        .unwrap()
        .execution_arn;
    // The first worker takes the task (a waiting poll notices it within ~1 s) and
    // heartbeats it; kill it mid-task.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let killed_at = started.elapsed();
    let _second = start_worker(&activity, &endpoint, &second_log);

    let ended = wait_for_execution(&client, &execution).await;
    let took = started.elapsed();
    let second_log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert_eq!(
        ended.status,
        ExecutionStatus::Succeeded,
        "{ended:?}\nsecond worker:\n{second_log}"
    );
    let history = client
        .get_execution_history()
        .execution_arn(&execution)
        .send()
        .await
        .unwrap();
    let timed_out = history
        .events()
        .iter()
        .filter(|event| event.r#type() == &HistoryEventType::ActivityTimedOut)
        .count();
    println!(
        "SIGKILL at {killed_at:?}; the task timed out {timed_out} time(s) and the execution \
         succeeded {took:?} after it started (TimeoutSeconds {TIMEOUT_SECONDS})"
    );
    assert!(timed_out >= 1, "no ActivityTimedOut in the history");
    assert!(
        second_log.contains("task finished"),
        "the second worker did not run the retried task:\n{second_log}"
    );
    assert!(
        took < Duration::from_secs(TIMEOUT_SECONDS),
        "the retry waited for the task timeout, not the heartbeat timeout: {took:?}"
    );
}
