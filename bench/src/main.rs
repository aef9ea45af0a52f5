//! The benchmark suite: every figure in one run on one machine, side by side with ratios.
//!
//! 1. sandbox cost per task, per guest language, next to the bare-instantiate floor and a
//!    native Rust function doing the same work; 1b by phase and by instance (fresh, ready,
//!    warm); 1c a task's latency through the worker by instance;
//! 2. worker throughput through the Step Functions fake at concurrency 1, 8, 64: the wasm
//!    worker, the same worker with a native handler, a boto3 worker, and the fake's ceiling;
//! 3. memory: RSS idle and with 64 in-flight tasks per guest language;
//! 4. start-up: process start → first poll, cold and warm compilation cache; 4b. idle CPU
//!    with 8 open polls;
//! 5. (--localstack) tasks/s against LocalStack and where the time goes;
//! 6. tenants: N activities in one process, start-up, memory, first task per tenant;
//! 7. peers: the published Python and Node.js workers and a boto3 worker, side by side with
//!    the wasm worker, each its own process, at 1/8/64 and three round trips;
//! 8. hostile neighbours: one activity's latency alone and beside one flooded with hostile
//!    guests;
//! 9. the CPU share;
//! 10. the task journal's cost per task (CPU, fsyncs) at concurrency 8 and 64.
//!
//! Run it with `bash bench/run.sh [--quick] [--localstack]` (see BENCHMARKS.md).

mod cpu_share;
mod idle;
mod journal;
mod latency;
mod localstack;
mod memory;
mod native;
mod neighbours;
mod peers;
mod raw_client;
mod report;
mod sandbox_cost;
mod startup;
mod tenants;
mod throughput;
mod timed;

use anyhow::{bail, Result};
use clap::Parser;
use sfn_fake::FakeSfn;
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use sfn_wasm_worker::sandbox::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::sandbox::host_api::{Heartbeat, Interrupt};
use sfn_wasm_worker::sandbox::{Runtime, Task, TaskLimits};
use sfn_wasm_worker::worker::sfn::SfnClient;
use sfn_wasm_worker::worker::{StatsSnapshot, Worker};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The allocator the worker binary uses (host/src/main.rs), so that the in-process workers
/// measured here run as the binary does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The guests measured, by language.
const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", "rust-order"),
    ("C", "c-order"),
    ("JavaScript", "js-order"),
    ("Python", "python-order"),
];
/// The task every benchmark runs: a small, valid order.
const ORDER: &str = r#"{"order_id":"B-1","items":[{"sku":"pen","quantity":3,"unit_price_cents":250},{"sku":"ink","quantity":1,"unit_price_cents":1299}],"discount_percent":10}"#;
const CONCURRENCIES: [usize; 3] = [1, 8, 64];

#[derive(Parser)]
#[command(about = "sfn-wasm-worker benchmarks")]
struct Args {
    /// Small counts (what CI runs so the bench never rots); figures are noisy
    #[arg(long)]
    quick: bool,
    /// Also measure against LocalStack's Step Functions (slow: ~20 tasks/s)
    #[arg(long)]
    localstack: bool,
    /// Run only these sections (1 sandbox, 2 throughput, 3 memory, 4 start-up and idle, 5
    /// LocalStack, 6 tenants, 7 peers, 8 hostile neighbours, 9 the CPU share, 10 the task
    /// journal)
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Override the number of tasks per throughput run
    #[arg(long)]
    tasks: Option<usize>,
    /// Measure only these guest languages in sections 1 and 3 (e.g. `Rust,C`)
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
    /// Section 7: only the workers whose label contains one of these (e.g. `rust-order,Node`)
    #[arg(long, value_delimiter = ',')]
    workers: Vec<String>,
    /// Section 7: only these concurrencies (e.g. `8`)
    #[arg(long, value_delimiter = ',')]
    concurrencies: Vec<usize>,
}

/// Counts for one mode.
struct Counts {
    sandbox_iterations: usize,
    throughput_tasks: usize,
    boto3_tasks: usize,
    localstack_tasks: usize,
    /// Tasks per section 7 run answering at once (fewer with a round trip).
    peer_tasks: usize,
    repetitions: usize,
    /// How long section 4b watches an idle worker.
    idle_window: Duration,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A worker named `name` serving `activities` against `fake` in this process: the token
/// that stops it, and its run.
async fn serve_in_process(
    runtime: &Runtime,
    fake: &FakeSfn,
    name: &str,
    activities: Vec<ActivityConfig>,
) -> Result<(CancellationToken, JoinHandle<Result<StatsSnapshot>>)> {
    let config = Config {
        worker: WorkerSection {
            name: Some(name.into()),
            ..Default::default()
        },
        activities,
    };
    let client = SfnClient::new(&fake.sdk_config().await);
    let worker = Worker::new(runtime, &config.validate()?, client)?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    Ok((shutdown, running))
}

/// Waits until every task of `tokens` in `fake` has ended (however), at most `within`.
async fn wait_until_ended(fake: &FakeSfn, tokens: &[String], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while tokens
        .iter()
        .any(|token| fake.task(token).ended_at.is_none())
    {
        if Instant::now() > deadline {
            bail!(
                "tasks still running {} s after the window",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn guest_path(name: &str) -> Result<PathBuf> {
    let path = repo_root()
        .join("target/guests")
        .join(format!("{name}.wasm"));
    if !path.exists() {
        bail!(
            "{} is missing: run guest/build.sh first (bench/run.sh does)",
            path.display()
        );
    }
    Ok(path)
}

fn limits() -> TaskLimits {
    TaskLimits {
        timeout: Duration::from_secs(120),
        memory_limit: 256 << 20,
    }
}

fn task(input: &str, heartbeat: Arc<dyn Heartbeat>) -> Task {
    Task {
        input: input.to_string(),
        activity_arn: "arn:aws:states:us-east-1:000000000000:activity:bench".into(),
        worker_name: "bench".into(),
        task_id: "0123456789abcdef".into(),
        heartbeat,
        interrupt: Interrupt::default(),
    }
}

fn main() -> Result<()> {
    // As the worker binary does (see host/src/main.rs): no backtrace capture for library
    // errors, which wasmtime creates on its happy path, even where RUST_BACKTRACE=1.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sfn_wasm_worker::sandbox::cpu_share::runtime_threads())
        .enable_all()
        .build()?
        .block_on(run(Args::parse()))
}

async fn run(args: Args) -> Result<()> {
    let mut counts = if args.quick {
        Counts {
            sandbox_iterations: 300,
            throughput_tasks: 300,
            boto3_tasks: 100,
            localstack_tasks: 20,
            peer_tasks: 100,
            repetitions: 1,
            idle_window: Duration::from_secs(3),
        }
    } else {
        Counts {
            sandbox_iterations: 5_000,
            throughput_tasks: 5_000,
            boto3_tasks: 1_000,
            localstack_tasks: 200,
            peer_tasks: 2_000,
            repetitions: 3,
            idle_window: Duration::from_secs(20),
        }
    };
    if let Some(tasks) = args.tasks {
        counts.throughput_tasks = tasks;
    }
    let wanted = |section: u8| args.only.is_empty() || args.only.contains(&section);
    print_machine(args.quick);
    let runtime = Runtime::new(&EngineSettings {
        max_concurrent_tasks: 128,
        max_memory_bytes: 256 << 20,
        cache: CacheSetting::Directory(repo_root().join("target/wasmtime-cache")),
    })?;
    let mut guests = Vec::new();
    for (language, name) in LANGUAGES {
        if language == "Rust"
            || args.languages.is_empty()
            || args
                .languages
                .iter()
                .any(|l| l.eq_ignore_ascii_case(language))
        {
            guests.push((language, runtime.load(&guest_path(name)?)?));
        }
    }

    if wanted(1) {
        sandbox_cost::sandbox_cost(&runtime, &guests, counts.sandbox_iterations).await?;
        let names: Vec<(&str, &str)> = LANGUAGES
            .into_iter()
            .filter(|(language, _)| guests.iter().any(|(loaded, _)| loaded == language))
            .collect();
        latency::latency(&runtime, &names, counts.sandbox_iterations / 10).await?;
    }
    if wanted(2) {
        throughput::throughput(&guests[0].1, &counts, Duration::ZERO).await?;
        throughput::throughput(&guests[0].1, &counts, throughput::SIMULATED_LATENCY).await?;
    }
    if wanted(3) {
        memory::memory(&guests).await?;
        memory::many_in_flight(if args.quick { 1_000 } else { 10_000 }).await?;
    }
    if wanted(4) {
        startup::startup().await?;
        idle::idle_cpu(counts.idle_window).await?;
    }
    if wanted(6) {
        let counts: &[usize] = if args.quick {
            &[1, 5]
        } else {
            &[1, 5, 20, 100]
        };
        tenants::tenants(counts).await?;
    }
    if wanted(7) {
        peers::peers(counts.peer_tasks, &args.workers, &args.concurrencies).await?;
    }
    if wanted(8) {
        let window = Duration::from_secs(if args.quick { 3 } else { 15 });
        neighbours::neighbours(&runtime, window).await?;
    }
    if wanted(9) {
        let window = Duration::from_secs(if args.quick { 3 } else { 15 });
        let tasks = if args.quick { 16 } else { 40 };
        cpu_share::cpu_share(&runtime, tasks, window).await?;
    }
    if wanted(10) {
        journal::journal_cost(counts.throughput_tasks, counts.repetitions).await?;
    }
    if args.localstack || args.only.contains(&5) {
        localstack::localstack(&guests[0].1, counts.localstack_tasks).await?;
    }
    Ok(())
}

fn print_machine(quick: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "sfn-wasm-worker benchmarks ({} mode)",
        if quick { "quick" } else { "full" }
    );
    println!("machine: {cpu}, {cores} cores; wasmtime 48.0.8, release profile");
}
