//! Section 2: tasks/s through the Step Functions fake for the wasm worker, the same worker
//! with a native handler, a boto3 worker and the fake's ceiling; 2b adds a service-like
//! round trip to every answer.

use crate::report::{humantime_ms, us, Table};
use crate::timed::{process_cpu_time, TimedHandler};
use crate::{guest_path, native, raw_client, repo_root, Counts, CONCURRENCIES, ORDER};
use anyhow::{bail, Context as _, Result};
use sfn_fake::FakeSfn;
use sfn_wasm_worker::config::units::HumanDuration;
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use sfn_wasm_worker::sandbox::{Guest, TaskHandler};
use sfn_wasm_worker::worker::sfn::SfnClient;
use sfn_wasm_worker::worker::Worker;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

/// The round trip section 2b adds to every answer of the fake, as a real service would
/// (section 2 has the fake answer at once: loopback, CPU-bound).
pub(crate) const SIMULATED_LATENCY: Duration = Duration::from_millis(10);

/// Section 2: tasks/s through the fake, with `latency` added to every answer, for the wasm
/// worker, the native-handler worker, the boto3 worker and the raw client.
pub(crate) async fn throughput(
    rust_guest: &Guest,
    counts: &Counts,
    latency: Duration,
) -> Result<()> {
    let python = boto3_python();
    let setting = if latency.is_zero() {
        "2. Worker throughput through the Step Functions fake, answering at once".to_string()
    } else {
        format!(
            "2b. The same with {} of simulated service latency per call",
            humantime_ms(latency)
        )
    };
    // With latency, runs are shorter in tasks (a task takes ≥ 2 round trips per slot).
    let tasks_for = |concurrency: usize| {
        if latency.is_zero() {
            counts.throughput_tasks
        } else {
            (40 * concurrency).clamp(100, counts.throughput_tasks)
        }
    };
    let mut table = Table::new(
        &format!(
            "{setting}, tasks/s (up to {} tasks per run, workers: median of {} alternating runs; boto3: up to {} tasks)",
            counts.throughput_tasks, counts.repetitions, counts.boto3_tasks
        ),
        &["concurrency", "wasm worker", "native-handler worker", "boto3 worker", "fake ceiling", "wasm/native", "wasm/boto3", "wasm/ceiling"],
    );
    let mut per_task = Table::new(
        &format!(
            "{}: per task, inside the same worker runs",
            setting.split(',').next().unwrap_or_default()
        ),
        &[
            "concurrency",
            "wasm: process CPU µs",
            "native: process CPU µs",
            "wasm: handler µs",
            "native: handler µs",
            "wasm - native CPU µs",
        ],
    );
    let wasm: Arc<dyn TaskHandler> = Arc::new(rust_guest.clone());
    let native: Arc<dyn TaskHandler> = Arc::new(native::NativeHandler);
    for concurrency in CONCURRENCIES {
        let tasks = tasks_for(concurrency);
        // Alternate the two workers and keep each one's median: the machine's noise between
        // runs (up to 1.5×) is larger than the difference being measured.
        let (mut wasm_runs, mut native_runs) = (Vec::new(), Vec::new());
        for _ in 0..counts.repetitions {
            wasm_runs.push(worker_run(wasm.clone(), concurrency, tasks, latency, None).await?);
            native_runs.push(worker_run(native.clone(), concurrency, tasks, latency, None).await?);
        }
        let wasm_run = WorkerRun::median(&mut wasm_runs);
        let native_run = WorkerRun::median(&mut native_runs);
        let (wasm_rate, native_rate) = (wasm_run.rate, native_run.rate);
        let whole_us = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6);
        per_task.row(vec![
            concurrency.to_string(),
            whole_us(wasm_run.cpu_per_task),
            whole_us(native_run.cpu_per_task),
            us(wasm_run.handler_mean),
            us(native_run.handler_mean),
            format!(
                "{:+.0}",
                (wasm_run.cpu_per_task.as_secs_f64() - native_run.cpu_per_task.as_secs_f64()) * 1e6
            ),
        ]);
        let boto3_rate = match &python {
            Ok(python) => {
                let tasks = tasks.min(counts.boto3_tasks);
                Some(boto3_rate(python, concurrency, tasks, latency).await?)
            }
            Err(_) => None,
        };
        let ceiling = ceiling_rate(concurrency, tasks, latency).await?;
        let fmt = |rate: Option<f64>| rate.map_or("n/a".into(), |r| format!("{r:.0}"));
        table.row(vec![
            concurrency.to_string(),
            fmt(Some(wasm_rate)),
            fmt(Some(native_rate)),
            fmt(boto3_rate),
            fmt(Some(ceiling)),
            format!("{:.2}", wasm_rate / native_rate),
            boto3_rate.map_or("n/a".into(), |b| format!("{:.1}", wasm_rate / b)),
            format!("{:.2}", wasm_rate / ceiling),
        ]);
    }
    table.print();
    if let Err(why) = python {
        println!("   boto3 worker not measured: {why}");
    }
    per_task.print();
    println!(
        "   process CPU: every thread of this process (worker, SDK, the fake's server) per task; \
         handler: one run timed inside the worker (wasm: store, instantiate, call, drop)"
    );
    if latency.is_zero() {
        println!(
            "   targets: wasm/native ≥ 0.95; wasm/boto3 ≥ 10 at concurrency 8; wasm/ceiling ≥ 0.8"
        );
    } else {
        println!(
            "   every call waits {}, as on a real service: the sandbox's cost disappears in it",
            humantime_ms(latency)
        );
    }
    Ok(())
}

/// A fake with `tasks` orders queued on one activity and `latency` added to every answer;
/// returns it and the ARN.
async fn loaded_fake(tasks: usize, latency: Duration) -> (FakeSfn, String) {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    fake.set_latency(latency);
    let arn = fake.create_activity("bench");
    for _ in 0..tasks {
        fake.enqueue(&arn, ORDER);
    }
    (fake, arn)
}

async fn wait_finished(fake: &FakeSfn, tasks: usize, limit: Duration) -> Result<()> {
    if tokio::time::timeout(limit, fake.wait_finished(tasks))
        .await
        .is_err()
    {
        bail!(
            "only {} of {tasks} tasks finished in {limit:?}",
            fake.finished()
        );
    }
    Ok(())
}

/// One worker run through the fake.
pub(crate) struct WorkerRun {
    /// Tasks per second, until the last task was reported.
    pub(crate) rate: f64,
    /// CPU this whole process used per task during the run.
    pub(crate) cpu_per_task: Duration,
    /// The mean time of one handler run inside the worker.
    handler_mean: Duration,
    /// Syncs of the task journal's file, if it kept one.
    pub(crate) journal_syncs: u64,
}

impl WorkerRun {
    /// The run with the median rate (its other figures come with it).
    pub(crate) fn median(runs: &mut [WorkerRun]) -> &WorkerRun {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        &runs[runs.len() / 2]
    }
}

/// `tasks` orders through the fake (answering after `latency`) by a worker running them with
/// `handler` at `concurrency`, keeping its task journal at `journal` if given.
pub(crate) async fn worker_run(
    handler: Arc<dyn TaskHandler>,
    concurrency: usize,
    tasks: usize,
    latency: Duration,
    journal: Option<&Path>,
) -> Result<WorkerRun> {
    let (fake, arn) = loaded_fake(tasks, latency).await;
    let mut activity = ActivityConfig::new(arn, guest_path("rust-order")?);
    activity.max_concurrency = concurrency as u32;
    activity.pollers = concurrency as u32;
    activity.timeout = Some(HumanDuration(Duration::from_secs(60)));
    let config = Config {
        worker: WorkerSection {
            name: Some("bench".into()),
            ..Default::default()
        },
        activities: vec![activity],
    };
    let timed = Arc::new(TimedHandler::new(handler));
    let mut worker = Worker::with_handlers(
        &config.validate()?,
        vec![timed.clone()],
        SfnClient::new(&fake.sdk_config().await),
    )?;
    if let Some(journal) = journal {
        worker.open_journal(journal)?;
    }
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let (started, cpu_before) = (Instant::now(), process_cpu_time());
    let running = tokio::spawn(worker.run(shutdown.clone()));
    wait_finished(&fake, tasks, Duration::from_secs(600)).await?;
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    let cpu_per_task = (process_cpu_time() - cpu_before) / tasks as u32;
    shutdown.cancel();
    let stats = running.await??;
    if stats.succeeded != tasks as u64 {
        bail!("{} of {tasks} tasks succeeded", stats.succeeded);
    }
    Ok(WorkerRun {
        rate,
        cpu_per_task,
        handler_mean: timed.mean(),
        journal_syncs: metrics.journal_syncs.get(),
    })
}

/// The Python with boto3: LocalStack's venv (tests/localstack.sh install), else python3.
pub(crate) fn boto3_python() -> Result<PathBuf, String> {
    let home = std::env::var("LOCALSTACK_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/sfn-wasm-worker/localstack")
        });
    for python in [home.join("venv/bin/python"), PathBuf::from("python3")] {
        let works = std::process::Command::new(&python)
            .args(["-c", "import boto3"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if works {
            return Ok(python);
        }
    }
    Err("no Python with boto3 (pip install boto3, or tests/localstack.sh install)".into())
}

async fn boto3_rate(
    python: &Path,
    concurrency: usize,
    tasks: usize,
    latency: Duration,
) -> Result<f64> {
    let (fake, arn) = loaded_fake(tasks, latency).await;
    let mut child = tokio::process::Command::new(python)
        .arg(repo_root().join("bench/boto3_worker.py"))
        .args(["--endpoint", &fake.endpoint, "--arn", &arn])
        .args([
            "--concurrency",
            &concurrency.to_string(),
            "--tasks",
            &tasks.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the boto3 worker")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    if lines.next_line().await?.as_deref() != Some("ready") {
        bail!("the boto3 worker did not start");
    }
    let started = Instant::now();
    wait_finished(&fake, tasks, Duration::from_secs(600)).await?;
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    let status = child.wait().await?;
    if !status.success() {
        bail!("the boto3 worker failed: {status}");
    }
    Ok(rate)
}

async fn ceiling_rate(concurrency: usize, tasks: usize, latency: Duration) -> Result<f64> {
    let (fake, arn) = loaded_fake(tasks, latency).await;
    let started = Instant::now();
    let endpoint = fake.endpoint.clone();
    let client =
        tokio::spawn(async move { raw_client::run(&endpoint, &arn, concurrency, tasks).await });
    // Measured like the workers: until the last task is reported, not until idle polls end.
    wait_finished(&fake, tasks, Duration::from_secs(600)).await?;
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    client.await??;
    Ok(rate)
}
