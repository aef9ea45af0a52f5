//! Section 4: process start → first GetActivityTask of the worker binary, with a cold and
//! then a warm cache, and with a precompiled component (`sfn-wasm-worker compile`) on an
//! empty cache, as a new machine would start.

use crate::memory::rss_bytes;
use crate::report::{mib, Table};
use crate::{guest_path, repo_root};
use anyhow::{bail, Context as _, Result};
use sfn_fake::{FakeSfn, Op};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) fn worker_binary() -> Result<PathBuf> {
    let path = std::env::var("SFN_WASM_WORKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/release/sfn-wasm-worker"));
    if !path.exists() {
        bail!(
            "{} is missing: cargo build --release --bin sfn-wasm-worker (bench/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// 4. Process start → first GetActivityTask, with a cold and then a warm cache.
pub(crate) async fn startup() -> Result<()> {
    let binary = worker_binary()?;
    let mut table = Table::new(
        "4. Start-up: process start → first poll (sfn-wasm-worker run)",
        &[
            "guest",
            "size MiB",
            "cold cache ms",
            "warm cache ms",
            "precompiled, empty cache ms",
            "worker RSS idle MiB",
        ],
    );
    for (language, name) in [("Rust", "rust-order"), ("Python", "python-order")] {
        let component = guest_path(name)?;
        let cache = tempfile::tempdir()?;
        let cold = time_to_first_poll(&binary, &component, cache.path()).await?;
        let warm = time_to_first_poll(&binary, &component, cache.path()).await?;
        let precompiled = cache.path().join(format!("{name}.cwasm"));
        let status = tokio::process::Command::new(&binary)
            .arg("compile")
            .arg(&component)
            .arg("-o")
            .arg(&precompiled)
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!(
                "sfn-wasm-worker compile {} failed: {status}",
                component.display()
            );
        }
        let empty_cache = tempfile::tempdir()?;
        let shipped = time_to_first_poll(&binary, &precompiled, empty_cache.path()).await?;
        table.row(vec![
            language.into(),
            format!(
                "{:.2}",
                std::fs::metadata(&component)?.len() as f64 / 1048576.0
            ),
            format!("{:.0}", cold.0.as_secs_f64() * 1e3),
            format!("{:.0}", warm.0.as_secs_f64() * 1e3),
            format!("{:.0}", shipped.0.as_secs_f64() * 1e3),
            mib(warm.1),
        ]);
    }
    table.print();
    println!("   targets: warm-cache start-up of the Python guest ≤ 1000 ms; precompiled on an empty cache ≤ 300 ms");
    Ok(())
}

async fn time_to_first_poll(
    binary: &Path,
    component: &Path,
    cache: &Path,
) -> Result<(Duration, u64)> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    let arn = fake.create_activity("startup");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(["run", "--activity-arn", &arn, "--component"])
        .arg(component)
        .args([
            "--endpoint-url",
            &fake.endpoint,
            "--region",
            "us-east-1",
            "--cache-dir",
        ])
        .arg(cache)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("SFN_WASM_WORKER_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let deadline = started + Duration::from_secs(300);
    let first = loop {
        if let Some(first) = fake.first_call(Op::GetActivityTask) {
            break first;
        }
        if Instant::now() > deadline {
            bail!("no poll within 300 s");
        }
        if let Some(status) = child.try_wait()? {
            bail!("the worker exited before polling: {status}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss = rss_bytes(child.id());
    let pid = child.id().context("worker pid")?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    if !status.success() {
        bail!("the worker exited with {status} after SIGTERM");
    }
    Ok((first.duration_since(started), rss))
}
