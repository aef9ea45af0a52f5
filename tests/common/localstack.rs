//! LocalStack for the end-to-end tests: started (and stopped) through tests/localstack.sh on
//! a port of the test's choosing, and helpers to create activities and state machines and
//! to wait on their executions.

use super::repo_root;
use aws_sdk_sfn::types::ExecutionStatus;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Stops the LocalStack this test started, if it started one.
pub struct LocalStack {
    pid: Option<String>,
}

impl LocalStack {
    /// Starts LocalStack on 127.0.0.1:`port` unless one is already serving there.
    pub fn start(port: &str) -> LocalStack {
        let output = Command::new(repo_root().join("tests/localstack.sh"))
            .arg("start")
            .env("LOCALSTACK_PORT", port)
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/localstack.sh");
        assert!(
            output.status.success(),
            "LocalStack did not start (see above)"
        );
        let pid = String::from_utf8(output.stdout).unwrap().trim().to_string();
        LocalStack {
            pid: (!pid.is_empty()).then_some(pid),
        }
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        if let Some(pid) = &self.pid {
            let _ = Command::new(repo_root().join("tests/localstack.sh"))
                .args(["stop", pid])
                .status();
        }
    }
}

/// Kills the worker if the test fails before it is stopped.
pub struct WorkerProcess(pub Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// Waits (up to 90 s) until the execution `arn` is no longer running.
pub async fn wait_for_execution(
    client: &aws_sdk_sfn::Client,
    arn: &str,
) -> aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let execution = client
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .unwrap();
        if execution.status != ExecutionStatus::Running {
            return execution;
        }
        assert!(
            Instant::now() < deadline,
            "execution {arn} still running after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `name` made unique to this run (LocalStack keeps what earlier runs created while it runs).
pub fn unique(name: &str) -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("{name}-{}-{millis}", std::process::id())
}

/// Creates an activity named `name` (made unique) and returns its ARN.
pub async fn create_activity(client: &aws_sdk_sfn::Client, name: &str) -> String {
    client
        .create_activity()
        .name(unique(name))
        .send()
        .await
        .unwrap()
        .activity_arn
}

/// Creates a state machine named `name` (made unique) from `definition` and returns its ARN.
pub async fn create_state_machine(
    client: &aws_sdk_sfn::Client,
    name: &str,
    definition: &serde_json::Value,
) -> String {
    client
        .create_state_machine()
        .name(unique(name))
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::000000000000:role/sfn-wasm-worker-e2e")
        .send()
        .await
        .unwrap()
        .state_machine_arn
}

/// Starts an execution of `machine` with `input`, waits for it, asserts that it succeeded
/// (`context` adds to the message if not, e.g. the worker's log) and returns its output.
pub async fn succeeded_output(
    client: &aws_sdk_sfn::Client,
    machine: &str,
    input: &serde_json::Value,
    context: &dyn Fn() -> String,
) -> serde_json::Value {
    let started = client
        .start_execution()
        .state_machine_arn(machine)
        .input(input.to_string())
        .send()
        .await
        .unwrap();
    let execution = wait_for_execution(client, &started.execution_arn).await;
    assert_eq!(
        execution.status,
        ExecutionStatus::Succeeded,
        "{execution:?}\n{}",
        context()
    );
    serde_json::from_str(execution.output.as_deref().unwrap()).unwrap()
}
