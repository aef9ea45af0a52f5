//! Section 5: executions/s against LocalStack's Step Functions through the worker, and
//! where the time goes.

use crate::report::Table;
use crate::timed::process_cpu_time;
use crate::{guest_path, repo_root, ORDER};
use anyhow::{bail, Result};
use serde_json::json;
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use sfn_wasm_worker::sandbox::{Guest, TaskHandler};
use sfn_wasm_worker::worker::sfn::SfnClient;
use sfn_wasm_worker::worker::Worker;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// 5. Against LocalStack: executions/s through the worker, and where the time goes.
pub(crate) async fn localstack(rust_guest: &Guest, executions: usize) -> Result<()> {
    const PORT: &str = "4598";
    let output = std::process::Command::new(repo_root().join("tests/localstack.sh"))
        .arg("start")
        .env("LOCALSTACK_PORT", PORT)
        .output()?;
    if !output.status.success() {
        bail!(
            "LocalStack did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let started_pid = String::from_utf8(output.stdout)?.trim().to_string();
    let result = localstack_run(rust_guest, executions, PORT).await;
    if !started_pid.is_empty() {
        std::process::Command::new(repo_root().join("tests/localstack.sh"))
            .args(["stop", &started_pid])
            .status()?;
    }
    result
}

async fn localstack_run(rust_guest: &Guest, executions: usize, port: &str) -> Result<()> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let sdk = sfn_fake::local_sdk_config(&endpoint).await;
    let client = aws_sdk_sfn::Client::new(&sdk);
    let name = format!("bench-{}", std::process::id());
    let arn = client
        .create_activity()
        .name(&name)
        .send()
        .await?
        .activity_arn;
    let definition = json!({"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": arn, "TimeoutSeconds": 120, "End": true}}});
    let machine = client
        .create_state_machine()
        .name(&name)
        .definition(definition.to_string())
        .role_arn("arn:aws:iam::000000000000:role/bench")
        .send()
        .await?
        .state_machine_arn;
    let mut activity = ActivityConfig::new(arn, guest_path("rust-order")?);
    activity.max_concurrency = 8;
    activity.pollers = 8;
    let config = Config {
        worker: WorkerSection::default(),
        activities: vec![activity],
    };
    let handler: Arc<dyn TaskHandler> = Arc::new(rust_guest.clone());
    let worker = Worker::with_handlers(&config.validate()?, vec![handler], SfnClient::new(&sdk))?;
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    for _ in 0..executions {
        client
            .start_execution()
            .state_machine_arn(&machine)
            .input(ORDER)
            .send()
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while stats.snapshot().succeeded < executions as u64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {executions} tasks done",
                stats.snapshot().succeeded
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = (process_cpu_time() - cpu_before).as_secs_f64();
    shutdown.cancel();
    running.abort(); // LocalStack holds the remaining empty polls 60 s; nothing is queued.
    let mut table = Table::new(
        &format!("5. Against LocalStack ({executions} executions, worker concurrency 8)"),
        &[
            "tasks/s",
            "wall s",
            "worker CPU s",
            "worker share of wall time",
        ],
    );
    table.row(vec![
        format!("{:.1}", executions as f64 / wall),
        format!("{wall:.1}"),
        format!("{cpu:.2}"),
        format!("{:.1} %", 100.0 * cpu / wall),
    ]);
    table.print();
    println!(
        "   worker CPU: this process (worker + its wasm guests + SDK) while the executions ran"
    );
    Ok(())
}
