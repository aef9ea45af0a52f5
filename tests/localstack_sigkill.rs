//! Against LocalStack: a SIGKILLed worker mid-task.
//!
//! - Without a journal it reports nothing, so its task waits for the state's
//!   `HeartbeatSeconds`; then the state machine's Retry hands it to another worker, and the
//!   execution succeeds well before its `TimeoutSeconds`. This is why long tasks want
//!   `HeartbeatSeconds` and a `heartbeat_interval` shorter than it (README "Shutdown").
//! - With a journal (`--journal`), the next worker fails the task with `Worker.Restarted`
//!   as soon as it starts, and the Retry runs it again: the execution succeeds within
//!   seconds, long before its HeartbeatSeconds.
//!
//! LocalStack runs on port 4597 here (the other LocalStack tests use 4598 and 4599).

mod common;

use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use common::localstack::{
    create_activity, create_state_machine, wait_for_execution, LocalStack, WorkerProcess,
};
use common::*;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

const PORT: &str = "4597";
const TIMEOUT_SECONDS: u64 = 60;

fn start_worker(
    activity: &str,
    endpoint: &str,
    log: &Path,
    journal: Option<&Path>,
) -> WorkerProcess {
    let mut command = worker_command();
    command
        .args(["run", "--activity-arn", activity, "--component"])
        .arg(guest_path("adversary"))
        .args(["--max-concurrency", "1", "--heartbeat-interval", "1s"])
        .args(["--timeout", "30s", "--endpoint-url", endpoint])
        .args(["--region", "us-east-1"])
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(journal) = journal {
        command.arg("--journal").arg(journal);
    }
    WorkerProcess(command.spawn().expect("starting the worker"))
}

/// Events of `kind` in the execution's history.
async fn events(client: &aws_sdk_sfn::Client, execution: &str, kind: HistoryEventType) -> usize {
    let history = client
        .get_execution_history()
        .execution_arn(execution)
        .send()
        .await
        .unwrap();
    history
        .events()
        .iter()
        .filter(|event| event.r#type() == &kind)
        .count()
}

/// Runs an execution whose task sleeps 15 s, SIGKILLs the worker once the task has started
/// (and a second passed), starts a second worker; returns the execution's history counts of
/// (timed out, failed) activities and the time it took.
async fn kill_mid_task(
    client: &aws_sdk_sfn::Client,
    endpoint: &str,
    name: &str,
    heartbeat_seconds: u64,
    journal: Option<&Path>,
) -> (usize, usize, Duration) {
    let activity = create_activity(client, name).await;
    let definition = json!({"StartAt": "Work", "States": {"Work": {
        "Type": "Task", "Resource": activity, "End": true,
        "TimeoutSeconds": TIMEOUT_SECONDS, "HeartbeatSeconds": heartbeat_seconds,
        "Retry": [{"ErrorEquals": ["States.Timeout", "States.HeartbeatTimeout", "Worker.Restarted"],
                   "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1.0}]}}});
    let machine = create_state_machine(client, name, &definition).await;

    let dir = tempfile::tempdir().unwrap();
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut first = start_worker(&activity, endpoint, &first_log, journal);
    let started = Instant::now();
    let execution = client
        .start_execution()
        .state_machine_arn(&machine)
        .input(json!({"behaviour": "sleep", "ms": 15_000}).to_string())
        .send()
        .await
        .unwrap()
        .execution_arn;
    // Killed once the first worker holds the task (LocalStack records ActivityStarted when
    // a poll takes it) and has been running it for a second.
    let deadline = Instant::now() + Duration::from_secs(60);
    while events(client, &execution, HistoryEventType::ActivityStarted).await == 0 {
        assert!(Instant::now() < deadline, "no worker took the task in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    let killed_at = started.elapsed();
    let _second = start_worker(&activity, endpoint, &second_log, journal);

    let ended = wait_for_execution(client, &execution).await;
    let took = started.elapsed();
    let second_log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert_eq!(
        ended.status,
        ExecutionStatus::Succeeded,
        "{ended:?}\nsecond worker:\n{second_log}"
    );
    assert!(
        second_log.contains("task finished"),
        "the second worker did not run the retried task:\n{second_log}"
    );
    let timed_out = events(client, &execution, HistoryEventType::ActivityTimedOut).await;
    let failed = events(client, &execution, HistoryEventType::ActivityFailed).await;
    println!(
        "{name}: SIGKILL at {killed_at:?}; timed out {timed_out}, failed {failed} time(s); the \
         execution succeeded {took:?} after it started (HeartbeatSeconds {heartbeat_seconds})"
    );
    (timed_out, failed, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_workers_task_is_retried_after_its_heartbeat_timeout_or_at_once_with_a_journal()
{
    let _localstack = LocalStack::start(PORT);
    let endpoint = format!("http://127.0.0.1:{PORT}");
    let client = aws_sdk_sfn::Client::new(&sfn_fake::local_sdk_config(&endpoint).await);

    let (timed_out, _, took) = kill_mid_task(&client, &endpoint, "sigkill", 3, None).await;
    assert!(timed_out >= 1, "no ActivityTimedOut in the history");
    assert!(
        took < Duration::from_secs(TIMEOUT_SECONDS),
        "the retry waited for the task timeout, not the heartbeat timeout: {took:?}"
    );

    // With a journal, HeartbeatSeconds 40: without the journal's replay the retry would wait
    // that long.
    let journal = tempfile::tempdir().unwrap();
    let (timed_out, failed, took) = kill_mid_task(
        &client,
        &endpoint,
        "sigkill-journal",
        40,
        Some(journal.path()),
    )
    .await;
    assert_eq!(
        timed_out, 0,
        "the task timed out instead of being failed at once"
    );
    assert_eq!(failed, 1, "one Worker.Restarted failure, then the retry");
    assert!(
        took < Duration::from_secs(40),
        "the retry waited for the heartbeat timeout: {took:?}"
    );
}
