//! The benchmark suite: every figure in one run on one machine, side by side with ratios.
//!
//! 1. sandbox cost per task, per guest language, next to the bare-instantiate floor and a
//!    native Rust function doing the same work;
//! 2. worker throughput through the Step Functions fake at concurrency 1, 8, 64: the wasm
//!    worker, the same worker with a native handler, a boto3 worker, and the fake's ceiling;
//! 3. memory: RSS idle and with 64 in-flight tasks per guest language;
//! 4. start-up: process start → first poll, cold and warm compilation cache;
//! 5. (--localstack) tasks/s against LocalStack and where the time goes.
//!
//! Run it with `bash bench/run.sh [--quick] [--localstack]` (see BENCHMARKS.md).

#[path = "../../tests/fake_sfn/mod.rs"]
mod fake_sfn;
mod native;
mod raw_client;
mod report;
mod timed;

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use fake_sfn::{FakeSfn, Op};
use report::{percentiles, Table};
use serde_json::json;
use sfn_wasm_worker::config::{ActivityConfig, Config, WorkerSection};
use sfn_wasm_worker::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::host_api::{BeatFuture, CountingHeartbeat, Heartbeat, Interrupt};
use sfn_wasm_worker::runtime::{Guest, Runtime};
use sfn_wasm_worker::sfn::SfnClient;
use sfn_wasm_worker::task::{Grants, Task, TaskHandler, TaskLimits};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use timed::{process_cpu_time, TimedHandler};
use tokio::io::AsyncBufReadExt;

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
    /// Run only these sections (1 sandbox, 2 throughput, 3 memory, 4 start-up, 5 LocalStack)
    #[arg(long, value_delimiter = ',')]
    only: Vec<u8>,
    /// Override the number of tasks per throughput run
    #[arg(long)]
    tasks: Option<usize>,
    /// Measure only these guest languages in sections 1 and 3 (e.g. `Rust,C`)
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
}

/// Counts for one mode.
struct Counts {
    sandbox_iterations: usize,
    throughput_tasks: usize,
    boto3_tasks: usize,
    localstack_tasks: usize,
    repetitions: usize,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
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
            repetitions: 1,
        }
    } else {
        Counts {
            sandbox_iterations: 5_000,
            throughput_tasks: 5_000,
            boto3_tasks: 1_000,
            localstack_tasks: 200,
            repetitions: 3,
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
        sandbox_cost(&runtime, &guests, counts.sandbox_iterations).await?;
    }
    if wanted(2) {
        throughput(&guests[0].1, &counts, Duration::ZERO).await?;
        throughput(&guests[0].1, &counts, SIMULATED_LATENCY).await?;
    }
    if wanted(3) {
        memory(&guests).await?;
    }
    if wanted(4) {
        startup().await?;
    }
    if args.localstack || args.only.contains(&5) {
        localstack(&guests[0].1, counts.localstack_tasks).await?;
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

/// 1. Instantiate + call + drop per task, per language, next to the floor and native code.
async fn sandbox_cost(
    runtime: &Runtime,
    guests: &[(&str, Guest)],
    iterations: usize,
) -> Result<()> {
    let warmup = iterations / 10 + 10;
    let heartbeat: Arc<dyn Heartbeat> = Arc::new(CountingHeartbeat::default());
    let mut table = Table::new(
        &format!("1. Sandbox cost per task ({iterations} tasks each, after {warmup} warm-up)"),
        &["handler", "p50 µs", "p99 µs", "p50 / floor"],
    );

    // The floor: the least a sandbox costs. `(component)` has no instance and no memory, so it
    // is shown for reference; the ratios use an empty component that owns one 64 KiB memory.
    let nothing = empty_component_floor(runtime, "(component)", iterations, warmup).await?;
    let floor = empty_component_floor(runtime, EMPTY_WITH_MEMORY, iterations, warmup).await?;
    let ratio = |p50: Duration| format!("{:.1}", p50.as_secs_f64() / floor.0.as_secs_f64());
    table.row(vec![
        "reference: InstancePre::instantiate of `(component)` (no memory)".into(),
        us(nothing.0),
        us(nothing.1),
        ratio(nothing.0),
    ]);
    table.row(vec![
        "floor: InstancePre::instantiate of an empty component with one memory".into(),
        us(floor.0),
        us(floor.1),
        ratio(floor.0),
    ]);

    for (language, guest) in guests {
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..warmup + iterations {
            let started = Instant::now();
            let (end, _) = guest
                .run(
                    task(ORDER, heartbeat.clone()),
                    &limits(),
                    &Grants::default(),
                )
                .await;
            let elapsed = started.elapsed();
            if !matches!(&end, sfn_wasm_worker::task::TaskEnd::Report(o) if o.is_success()) {
                bail!("{language} guest did not succeed: {end:?}");
            }
            if i >= warmup {
                samples.push(elapsed);
            }
        }
        let (p50, p99) = percentiles(&mut samples);
        table.row(vec![
            format!("{language} guest: instantiate + handle + drop"),
            us(p50),
            us(p99),
            ratio(p50),
        ]);
    }

    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let started = Instant::now();
        std::hint::black_box(native::price_order(std::hint::black_box(ORDER)).unwrap());
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    let (p50, p99) = percentiles(&mut samples);
    table.row(vec![
        "native Rust function, same work".into(),
        us(p50),
        us(p99),
        ratio(p50),
    ]);
    table.print();
    println!("   target: the Rust guest ≤ 3 × the floor");
    Ok(())
}

/// A component with nothing in it but one core instance owning one 64 KiB memory.
const EMPTY_WITH_MEMORY: &str = r#"(component
  (core module $m (memory (export "memory") 1))
  (core instance $i (instantiate $m)))"#;

/// A bare store plus `InstancePre::instantiate_async` of the component in `wat`, then drop.
async fn empty_component_floor(
    runtime: &Runtime,
    wat: &str,
    iterations: usize,
    warmup: usize,
) -> Result<(Duration, Duration)> {
    let engine = runtime.engine();
    let component =
        wasmtime::component::Component::new(engine, wat).map_err(anyhow::Error::from)?;
    let linker = wasmtime::component::Linker::<()>::new(engine);
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)?;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let started = Instant::now();
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1);
        std::hint::black_box(
            pre.instantiate_async(&mut store)
                .await
                .map_err(anyhow::Error::from)?,
        );
        drop(store);
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    Ok(percentiles(&mut samples))
}

/// The round trip section 2b adds to every answer of the fake, as a real service would
/// (section 2 has the fake answer at once: loopback, CPU-bound).
const SIMULATED_LATENCY: Duration = Duration::from_millis(10);

/// Section 2: tasks/s through the fake, with `latency` added to every answer, for the wasm
/// worker, the native-handler worker, the boto3 worker and the raw client.
async fn throughput(rust_guest: &Guest, counts: &Counts, latency: Duration) -> Result<()> {
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
            wasm_runs.push(worker_run(wasm.clone(), concurrency, tasks, latency).await?);
            native_runs.push(worker_run(native.clone(), concurrency, tasks, latency).await?);
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
struct WorkerRun {
    /// Tasks per second, until the last task was reported.
    rate: f64,
    /// CPU this whole process used per task during the run.
    cpu_per_task: Duration,
    /// The mean time of one handler run inside the worker.
    handler_mean: Duration,
}

impl WorkerRun {
    /// The run with the median rate (its other figures come with it).
    fn median(runs: &mut [WorkerRun]) -> &WorkerRun {
        runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        &runs[runs.len() / 2]
    }
}

async fn worker_run(
    handler: Arc<dyn TaskHandler>,
    concurrency: usize,
    tasks: usize,
    latency: Duration,
) -> Result<WorkerRun> {
    let (fake, arn) = loaded_fake(tasks, latency).await;
    let mut activity = ActivityConfig::new(arn, guest_path("rust-order")?);
    activity.max_concurrency = concurrency as u32;
    activity.pollers = concurrency as u32;
    activity.timeout = Some(sfn_wasm_worker::units::HumanDuration(Duration::from_secs(
        60,
    )));
    let config = Config {
        worker: WorkerSection {
            name: Some("bench".into()),
            ..Default::default()
        },
        activities: vec![activity],
    };
    let timed = Arc::new(TimedHandler::new(handler));
    let worker = sfn_wasm_worker::worker::Worker::with_handlers(
        &config,
        vec![timed.clone()],
        SfnClient::new(&fake.sdk_config().await),
    )?;
    let (trigger, shutdown) = sfn_wasm_worker::shutdown::channel();
    let (started, cpu_before) = (Instant::now(), process_cpu_time());
    let running = tokio::spawn(worker.run(shutdown));
    wait_finished(&fake, tasks, Duration::from_secs(600)).await?;
    let rate = tasks as f64 / started.elapsed().as_secs_f64();
    let cpu_per_task = (process_cpu_time() - cpu_before) / tasks as u32;
    trigger.trigger();
    let stats = running.await??;
    if stats.succeeded != tasks as u64 {
        bail!("{} of {tasks} tasks succeeded", stats.succeeded);
    }
    Ok(WorkerRun {
        rate,
        cpu_per_task,
        handler_mean: timed.mean(),
    })
}

/// The Python with boto3: LocalStack's venv (tests/localstack.sh install), else python3.
fn boto3_python() -> Result<PathBuf, String> {
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

/// Holds every guest's heartbeat call until released: keeps tasks in flight.
struct Gate {
    arrived: AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
}

impl Heartbeat for Gate {
    fn beat(&self) -> BeatFuture<'_> {
        Box::pin(async move {
            self.arrived.fetch_add(1, Ordering::SeqCst);
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|&open| open).await;
            Ok(())
        })
    }
}

fn rss_bytes(pid: Option<u32>) -> u64 {
    let path = pid.map_or("/proc/self/status".to_string(), |pid| {
        format!("/proc/{pid}/status")
    });
    std::fs::read_to_string(path)
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// 3. RSS with 64 tasks per language in flight (each blocked in its heartbeat call).
async fn memory(guests: &[(&str, Guest)]) -> Result<()> {
    const IN_FLIGHT: usize = 64;
    let mut table = Table::new(
        &format!("3. Memory: {IN_FLIGHT} tasks in flight per guest language (this process)"),
        &[
            "guest",
            "RSS idle MiB",
            "RSS busy MiB",
            "RSS per task KiB",
            "guest linear memory KiB",
            "overhead per task KiB",
        ],
    );
    let mut input: serde_json::Value = serde_json::from_str(ORDER)?;
    input["heartbeat"] = json!(true);
    let input = input.to_string();
    for (language, guest) in guests {
        let idle = rss_bytes(None);
        let gate = Arc::new(Gate {
            arrived: AtomicUsize::new(0),
            release: tokio::sync::watch::channel(false).0,
        });
        let mut running = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (guest, gate, input) = (guest.clone(), gate.clone(), input.clone());
            running.push(tokio::spawn(async move {
                guest
                    .run(task(&input, gate), &limits(), &Grants::default())
                    .await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while gate.arrived.load(Ordering::SeqCst) < IN_FLIGHT {
            if Instant::now() > deadline {
                bail!(
                    "{language}: only {} tasks reached their heartbeat",
                    gate.arrived.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let busy = rss_bytes(None);
        gate.release.send_replace(true);
        let mut linear = 0;
        for one in running {
            let (end, stats) = one.await?;
            if !matches!(&end, sfn_wasm_worker::task::TaskEnd::Report(o) if o.is_success()) {
                bail!("{language}: {end:?}");
            }
            linear += stats.peak_memory;
        }
        let per_task = busy.saturating_sub(idle) as f64 / IN_FLIGHT as f64;
        let linear_per_task = linear as f64 / IN_FLIGHT as f64;
        table.row(vec![
            language.to_string(),
            format!("{:.1}", idle as f64 / 1048576.0),
            format!("{:.1}", busy as f64 / 1048576.0),
            format!("{:.0}", per_task / 1024.0),
            format!("{:.0}", linear_per_task / 1024.0),
            format!("{:.0}", (per_task - linear_per_task) / 1024.0),
        ]);
    }
    table.print();
    println!("   linear memory is the size the guest grew its memories to; RSS counts only pages touched");
    println!("   (copy-on-write images share untouched pages), so the overhead can be negative.");
    Ok(())
}

fn worker_binary() -> Result<PathBuf> {
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
async fn startup() -> Result<()> {
    let binary = worker_binary()?;
    let mut table = Table::new(
        "4. Start-up: process start → first poll (sfn-wasm-worker run)",
        &[
            "guest",
            "size MiB",
            "cold cache ms",
            "warm cache ms",
            "worker RSS idle MiB",
        ],
    );
    for (language, name) in [("Rust", "rust-order"), ("Python", "python-order")] {
        let component = guest_path(name)?;
        let cache = tempfile::tempdir()?;
        let cold = time_to_first_poll(&binary, &component, cache.path()).await?;
        let warm = time_to_first_poll(&binary, &component, cache.path()).await?;
        table.row(vec![
            language.into(),
            format!(
                "{:.2}",
                std::fs::metadata(&component)?.len() as f64 / 1048576.0
            ),
            format!("{:.0}", cold.0.as_secs_f64() * 1e3),
            format!("{:.0}", warm.0.as_secs_f64() * 1e3),
            format!("{:.1}", warm.1 as f64 / 1048576.0),
        ]);
    }
    table.print();
    println!("   target: warm-cache start-up of the Python guest ≤ 1000 ms");
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

/// 5. Against LocalStack: executions/s through the worker, and where the time goes.
async fn localstack(rust_guest: &Guest, executions: usize) -> Result<()> {
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
    let sdk = fake_sfn::local_sdk_config(&endpoint).await;
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
    let worker = sfn_wasm_worker::worker::Worker::with_handlers(
        &config,
        vec![handler],
        SfnClient::new(&sdk),
    )?;
    let stats = worker.stats();
    let (trigger, shutdown) = sfn_wasm_worker::shutdown::channel();
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(shutdown));
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
    trigger.trigger();
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

fn humantime_ms(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

fn us(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e6)
}
