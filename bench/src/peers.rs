//! Section 7: the workers a user would pick instead, side by side with sfn-wasm-worker, each
//! as its own process against the same Step Functions fake, running the same order handler:
//! the published Python worker (PyPI `stepfunctions-activity-worker`) running the Python
//! example's own code natively, the published Node.js worker (npm `step-function-worker`),
//! and a plain boto3 worker; installed pinned by bench/peers/install.sh. At concurrency
//! 1/8/64, answering at once and with a 1 ms and a 10 ms round trip on every call.
//!
//! For each: tasks/s from the first task queued to the last reported; the process's CPU
//! per task (every thread, from its CPU clock) over the same span; its RSS at the end.

use crate::memory::rss_bytes;
use crate::report::{humantime_ms, mib, Table};
use crate::startup::worker_binary;
use crate::timed::other_process_cpu_time;
use crate::{guest_path, repo_root, CONCURRENCIES, ORDER};
use anyhow::{bail, Context as _, Result};
use sfn_fake::{FakeSfn, Op, TaskState};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The round trips measured: none (loopback, CPU-bound), 1 ms, 10 ms.
const LATENCIES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(10),
];

/// One worker the section runs.
#[derive(Clone, Copy, PartialEq)]
enum Contender {
    /// sfn-wasm-worker (the release binary) with this example guest.
    Wasm(&'static str),
    /// The same with warm instances (`--instance-reuse`, past the run's length).
    WasmWarm(&'static str),
    /// stepfunctions-activity-worker 1.1.3 with the Python example's code.
    PythonPeer,
    /// step-function-worker 2.1.0 with the same pricing in JavaScript.
    NodePeer,
    /// bench/boto3_worker.py: boto3 and a thread per slot, no library.
    Boto3,
}

impl Contender {
    fn label(self) -> String {
        match self {
            Contender::Wasm(guest) => format!("sfn-wasm-worker + {guest}"),
            Contender::WasmWarm(guest) => format!("sfn-wasm-worker + {guest}, instance_reuse"),
            Contender::PythonPeer => "stepfunctions-activity-worker 1.1.3 (Python)".into(),
            Contender::NodePeer => "step-function-worker 2.1.0 (Node.js)".into(),
            Contender::Boto3 => "boto3 + threads (bench/boto3_worker.py)".into(),
        }
    }

    fn command(self, endpoint: &str, arn: &str, concurrency: usize) -> Result<Command> {
        let peers = repo_root().join("bench/peers");
        let python = repo_root().join("target/bench-peers/venv/bin/python");
        let slots = concurrency.to_string();
        let mut command = match self {
            Contender::Wasm(guest) | Contender::WasmWarm(guest) => {
                let mut command = Command::new(worker_binary()?);
                command
                    .args(["run", "--activity-arn", arn, "--component"])
                    .arg(guest_path(guest)?)
                    .args(["--max-concurrency", &slots, "--pollers", &slots])
                    .args(["--endpoint-url", endpoint, "--region", "us-east-1"])
                    .arg("--cache-dir")
                    .arg(repo_root().join("target/wasmtime-cache"))
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test");
                if let Contender::WasmWarm(_) = self {
                    command.args(["--instance-reuse", "1000000000"]);
                }
                command
            }
            Contender::PythonPeer => {
                let mut command = Command::new(python);
                command.arg(peers.join("python_peer.py"));
                command
            }
            Contender::NodePeer => {
                let mut command = Command::new("node");
                command.arg(peers.join("node_peer.js"));
                command
            }
            Contender::Boto3 => {
                let mut command = Command::new(python);
                command
                    .arg(repo_root().join("bench/boto3_worker.py"))
                    .args(["--tasks", "100000000"]);
                command
            }
        };
        if !matches!(self, Contender::Wasm(_) | Contender::WasmWarm(_)) {
            command.args([
                "--endpoint",
                endpoint,
                "--arn",
                arn,
                "--concurrency",
                &slots,
            ]);
        }
        // Every worker logs as it would in production; nobody reads it here.
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        Ok(command)
    }
}

/// What one run measured.
struct Run {
    rate: f64,
    cpu_per_task: Duration,
    rss: u64,
}

/// Section 7. `tasks_at_once` is the number of tasks of a loopback run; runs with a round
/// trip use fewer (each task waits for several).
/// `workers` and `concurrencies`, when not empty, keep only the contenders whose label
/// contains one of them and only those concurrencies.
pub(crate) async fn peers(
    tasks_at_once: usize,
    workers: &[String],
    concurrencies: &[usize],
) -> Result<()> {
    let installed = std::process::Command::new("bash")
        .arg(repo_root().join("bench/peers/install.sh"))
        .status()
        .context("running bench/peers/install.sh")?;
    if !installed.success() {
        bail!("bench/peers/install.sh failed: {installed}");
    }
    let contenders: Vec<Contender> = [
        Contender::Wasm("rust-order"),
        Contender::Wasm("python-order"),
        Contender::Wasm("js-order"),
        Contender::WasmWarm("python-order"),
        Contender::WasmWarm("js-order"),
        Contender::PythonPeer,
        Contender::NodePeer,
        Contender::Boto3,
    ]
    .into_iter()
    .filter(|contender| {
        workers.is_empty()
            || workers
                .iter()
                .any(|w| contender.label().contains(w.as_str()))
    })
    .collect();
    for latency in LATENCIES {
        let tasks = if latency.is_zero() {
            tasks_at_once
        } else if latency < Duration::from_millis(5) {
            tasks_at_once / 2
        } else {
            tasks_at_once / 5
        }
        .max(50);
        let mut table = Table::new(
            &format!(
                "7. Peers, {} tasks per run, {}: tasks/s, CPU per task, RSS",
                tasks,
                if latency.is_zero() {
                    "the fake answering at once".to_string()
                } else {
                    format!("{} round trip per call", humantime_ms(latency))
                }
            ),
            &[
                "concurrency",
                "worker",
                "tasks/s",
                "CPU µs/task",
                "tasks per CPU-s",
                "RSS MiB",
                "CPU/task ÷ wasm+Rust's",
            ],
        );
        for concurrency in CONCURRENCIES
            .into_iter()
            .filter(|c| concurrencies.is_empty() || concurrencies.contains(c))
        {
            let mut rust_cpu = None;
            for &contender in &contenders {
                let cells = match run(contender, concurrency, tasks, latency).await {
                    Ok(run) => {
                        let cpu = run.cpu_per_task.as_secs_f64();
                        if contender == Contender::Wasm("rust-order") {
                            rust_cpu = Some(cpu);
                        }
                        vec![
                            format!("{:.0}", run.rate),
                            format!("{:.0}", cpu * 1e6),
                            format!("{:.0}", 1.0 / cpu),
                            mib(run.rss),
                            rust_cpu.map_or("n/a".into(), |rust| format!("{:.1}", cpu / rust)),
                        ]
                    }
                    Err(err) => vec![
                        format!("failed: {err:#}"),
                        "".into(),
                        "".into(),
                        "".into(),
                        "".into(),
                    ],
                };
                let mut row = vec![concurrency.to_string(), contender.label()];
                row.extend(cells);
                table.row(row);
            }
        }
        table.print();
    }
    println!(
        "   targets: sfn-wasm-worker + rust-order ≥ 10× every peer's tasks per CPU-second; \
         + python-order ahead of the Python peer running the same code natively; with 10 ms \
         round trips at concurrency 8, python-order and js-order with instance_reuse ≤ 2 × \
         rust-order's CPU per task and js-order below the Node.js peer's; at concurrency 1, \
         rust-order ≥ the Node.js peer's tasks/s"
    );
    Ok(())
}

/// Starts `contender` against a fresh fake, waits until it polls, queues `tasks` orders, and
/// measures until the last is reported; every task must succeed.
async fn run(
    contender: Contender,
    concurrency: usize,
    tasks: usize,
    latency: Duration,
) -> Result<Run> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    fake.set_latency(latency);
    let arn = fake.create_activity("peers");
    let mut child = contender
        .command(&fake.endpoint, &arn, concurrency)?
        .spawn()?;
    let pid = child.id().context("the worker's pid")?;
    let started = Instant::now();
    while fake.calls(Op::GetActivityTask) == 0 {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("it never polled");
        }
        if let Some(status) = child.try_wait()? {
            bail!("it exited before polling: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // every poller started
    let (started, cpu_before) = (Instant::now(), other_process_cpu_time(pid)?);
    let tokens: Vec<String> = (0..tasks).map(|_| fake.enqueue(&arn, ORDER)).collect();
    let limit = Duration::from_secs(600);
    if tokio::time::timeout(limit, fake.wait_finished(tasks))
        .await
        .is_err()
    {
        bail!("{} of {tasks} tasks in {limit:?}", fake.finished());
    }
    let elapsed = started.elapsed();
    let cpu = other_process_cpu_time(pid)? - cpu_before;
    let rss = rss_bytes(Some(pid));
    child.kill().await?;
    if let Some(token) = tokens
        .iter()
        .find(|token| !matches!(fake.task(token).state, TaskState::Succeeded(_)))
    {
        bail!("a task ended {:?}", fake.task(token).state);
    }
    Ok(Run {
        rate: tasks as f64 / elapsed.as_secs_f64(),
        cpu_per_task: cpu / tasks as u32,
        rss,
    })
}
