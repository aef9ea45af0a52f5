//! Section 6: many tenants in one worker process. N activities, each with its own copy of a
//! guest (the same bytes, compiled once into the cache), served by the worker binary: the
//! time until every activity polls, the process's memory from `/proc/PID/smaps_rollup` once
//! idle, and each tenant's first task against later ones.

use crate::report::{mib, Table};
use crate::startup::worker_binary;
use crate::{guest_path, repo_root, ORDER};
use anyhow::{bail, Context as _, Result};
use sfn_fake::FakeSfn;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The figures of one run with `tenants` activities.
struct TenantRun {
    tenants: usize,
    startup: Duration,
    memory: HashMap<String, u64>,
    first_task: Duration,
    later_task: Duration,
}

/// 6. N tenants of each guest in one process.
pub async fn tenants(counts: &[usize]) -> Result<()> {
    let mut table = Table::new(
        "6. Tenants in one process: N activities, each its own copy of the guest (cache warm)",
        &[
            "guest",
            "N",
            "all polling ms",
            "RSS MiB",
            "anon MiB",
            "private dirty MiB",
            "private per extra tenant MiB",
            "first task ms (max)",
            "later task ms (max)",
        ],
    );
    for (language, name) in [("Python", "python-order"), ("Rust", "rust-order")] {
        let mut baseline: Option<TenantRun> = None;
        for &count in counts {
            let run = run_tenants(name, count).await?;
            let per_tenant = baseline.as_ref().map_or("".to_string(), |base| {
                let extra = run.tenants - base.tenants;
                let grown =
                    run.memory["Private_Dirty"].saturating_sub(base.memory["Private_Dirty"]);
                format!("{:.2}", grown as f64 / extra.max(1) as f64 / 1048576.0)
            });
            table.row(vec![
                language.into(),
                count.to_string(),
                format!("{:.0}", run.startup.as_secs_f64() * 1e3),
                mib(run.memory["Rss"]),
                mib(run.memory["Anonymous"]),
                mib(run.memory["Private_Dirty"]),
                per_tenant,
                format!("{:.1}", run.first_task.as_secs_f64() * 1e3),
                format!("{:.1}", run.later_task.as_secs_f64() * 1e3),
            ]);
            baseline.get_or_insert(run);
        }
    }
    table.print();
    println!("   targets: ≤ 5 MiB private per idle Python tenant, ≤ 1 MiB per idle Rust tenant");
    Ok(())
}

async fn run_tenants(name: &str, count: usize) -> Result<TenantRun> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_secs(60));
    let dir = tempfile::tempdir()?;
    let source = guest_path(name)?;
    let mut config = format!(
        "[worker]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\ncache_dir = \"{}\"\n",
        fake.endpoint,
        repo_root().join("target/wasmtime-cache").display()
    );
    let mut arns = Vec::new();
    for tenant in 0..count {
        let arn = fake.create_activity(&format!("tenant-{tenant}"));
        let component = dir.path().join(format!("tenant-{tenant}.wasm"));
        std::fs::copy(&source, &component)?;
        config += &format!(
            "\n[[activity]]\narn = \"{arn}\"\ncomponent = \"{}\"\nmax_concurrency = 2\nmemory_limit = \"256MiB\"\n",
            component.display()
        );
        arns.push(arn);
    }
    let config_path = dir.path().join("worker.toml");
    std::fs::write(&config_path, config)?;
    let started = Instant::now();
    let mut child = Command::new(worker_binary()?)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("SFN_WASM_WORKER_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting sfn-wasm-worker")?;
    while !arns.iter().all(|arn| fake.open_polls(arn) > 0) {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("{count} tenants of {name}: not all polling after 600 s");
        }
        if let Some(status) = child.try_wait()? {
            bail!("the worker exited before polling: {status}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let startup = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = smaps_rollup(child.id().context("worker pid")?)?;
    let first_task = slowest_task(&fake, &arns).await?;
    let later_task = slowest_task(&fake, &arns).await?;
    child.kill().await?;
    Ok(TenantRun {
        tenants: count,
        startup,
        memory,
        first_task,
        later_task,
    })
}

/// One task per tenant, one after another; the slowest enqueue → report time.
async fn slowest_task(fake: &FakeSfn, arns: &[String]) -> Result<Duration> {
    let mut slowest = Duration::ZERO;
    for arn in arns {
        let started = Instant::now();
        let token = fake.enqueue(arn, ORDER);
        fake.wait_for_result(&token, Duration::from_secs(60)).await;
        slowest = slowest.max(started.elapsed());
    }
    Ok(slowest)
}

/// The byte counts of `/proc/PID/smaps_rollup` (`Rss`, `Anonymous`, `Private_Dirty`, ...).
fn smaps_rollup(pid: u32) -> Result<HashMap<String, u64>> {
    let path = Path::new("/proc")
        .join(pid.to_string())
        .join("smaps_rollup");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.to_string(), kib * 1024))
        })
        .collect())
}
