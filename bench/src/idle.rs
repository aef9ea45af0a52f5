//! Section 4b: CPU an idle worker burns, with 8 long polls open and no task, for the worker
//! binary and the boto3 worker: a fleet keeps many workers idle most of the day.

use crate::memory::rss_bytes;
use crate::report::{mib, Table};
use crate::startup::worker_binary;
use crate::throughput::boto3_python;
use crate::timed::other_process_cpu_time;
use crate::{guest_path, repo_root};
use anyhow::{bail, Context as _, Result};
use sfn_fake::FakeSfn;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Polls each worker keeps open while idle.
const POLLERS: usize = 8;

/// 4b. Idle CPU per second of each worker with [`POLLERS`] polls held open by the fake (as
/// the service holds them, up to 60 s).
pub async fn idle_cpu(window: Duration) -> Result<()> {
    let mut table = Table::new(
        &format!(
            "4b. Idle: CPU per second with {POLLERS} open polls and no task ({} s window)",
            window.as_secs()
        ),
        &["worker", "CPU ms/s", "RSS MiB"],
    );
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_secs(60));
    let arn = fake.create_activity("idle");
    let worker = spawn_wasm_worker(&fake, &arn)?;
    let (cpu, rss) = measure_idle(&fake, &arn, worker, window).await?;
    table.row(vec![
        "sfn-wasm-worker (Rust guest)".into(),
        format!("{cpu:.2}"),
        mib(rss),
    ]);
    match boto3_python() {
        Ok(python) => {
            let fake = FakeSfn::start().await;
            fake.set_poll_hold(Duration::from_secs(60));
            let arn = fake.create_activity("idle-boto3");
            let child = Command::new(python)
                .arg(repo_root().join("bench/boto3_worker.py"))
                .args(["--endpoint", &fake.endpoint, "--arn", &arn])
                .args(["--concurrency", &POLLERS.to_string(), "--tasks", "1000000"])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting the boto3 worker")?;
            let (cpu, rss) = measure_idle(&fake, &arn, child, window).await?;
            table.row(vec![
                "boto3 + ThreadPoolExecutor".into(),
                format!("{cpu:.2}"),
                mib(rss),
            ]);
        }
        Err(why) => println!("   (boto3 worker skipped: {why})"),
    }
    table.print();
    println!("   target: sfn-wasm-worker ≤ 1 ms of CPU per second idle");
    Ok(())
}

fn spawn_wasm_worker(fake: &FakeSfn, arn: &str) -> Result<Child> {
    let cache = repo_root().join("target/wasmtime-cache");
    Command::new(worker_binary()?)
        .args(["run", "--activity-arn", arn, "--component"])
        .arg(guest_path("rust-order")?)
        .args(["--pollers", &POLLERS.to_string()])
        .args(["--max-concurrency", &POLLERS.to_string()])
        .args(["--endpoint-url", &fake.endpoint, "--region", "us-east-1"])
        .arg("--cache-dir")
        .arg(cache)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("SFN_WASM_WORKER_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting sfn-wasm-worker")
}

/// Waits until `child` holds [`POLLERS`] polls on `arn`, settles, then measures its CPU over
/// `window`: milliseconds of CPU per second, and its RSS at the end.
async fn measure_idle(
    fake: &FakeSfn,
    arn: &str,
    mut child: Child,
    window: Duration,
) -> Result<(f64, u64)> {
    let pid = child.id().context("child pid")?;
    let mut waited = Duration::ZERO;
    while fake.open_polls(arn) < POLLERS {
        if waited > Duration::from_secs(300) {
            bail!("pid {pid}: {POLLERS} polls never opened");
        }
        if let Some(status) = child.try_wait()? {
            bail!("pid {pid} exited before polling: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += Duration::from_millis(50);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = other_process_cpu_time(pid)?;
    tokio::time::sleep(window).await;
    let after = other_process_cpu_time(pid)?;
    let rss = rss_bytes(Some(pid));
    child.kill().await?;
    let per_second = (after - before).as_secs_f64() * 1e3 / window.as_secs_f64();
    Ok((per_second, rss))
}
