//! The `sfn-wasm-worker` command line: `run` (the worker), `invoke` and `check`.

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use sfn_wasm_worker::config::{ActivityConfig, Config};
use sfn_wasm_worker::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::host_api::{CountingHeartbeat, Interrupt};
use sfn_wasm_worker::runtime::{self, Runtime, WORLD};
use sfn_wasm_worker::task::{Grants, Task, TaskEnd, TaskLimits};
use sfn_wasm_worker::units::{ByteSize, HumanDuration};
use sfn_wasm_worker::worker::Worker;
use sfn_wasm_worker::{sfn, shutdown};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The SDK, hyper and wasmtime allocate and free many small objects per task, on whichever
/// runtime thread runs it; mimalloc serves them with less CPU than glibc's malloc
/// (BENCHMARKS.md: a fifth to a quarter of the worker's CPU per task).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the memory freed so far to the OS. Loading components frees large buffers (a
/// compiled 18 MB Python guest leaves ~110 MiB), which mimalloc would otherwise keep for reuse
/// while the worker idles on its polls.
fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks mimalloc's own free lists; it has no preconditions.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Exit code for a task that failed (its outcome is still printed), or a worker that lost
/// every activity.
const EXIT_TASK_FAILED: u8 = 1;
/// Exit code for bad usage, bad input or a component that cannot be loaded.
const EXIT_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    version,
    about = "Runs AWS Step Functions activity tasks in sandboxed WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: GlobalArgs,
}

#[derive(Args)]
struct GlobalArgs {
    /// Directory of the compilation cache [default: wasmtime's, under ~/.cache]
    #[arg(long, global = true, env = "SFN_WASM_WORKER_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every component at start-up instead of using the cache
    #[arg(long, global = true)]
    no_cache: bool,
    /// Log filter, e.g. `info`, `debug`, `sfn_wasm_worker=debug,guest=info`
    #[arg(
        long,
        global = true,
        env = "SFN_WASM_WORKER_LOG",
        default_value = "info"
    )]
    log: String,
    /// Log format
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Step Functions activities until SIGTERM/SIGINT, then drain
    Run(RunArgs),
    /// Run one task locally and print its outcome as Step Functions would get it
    Invoke(InvokeArgs),
    /// Check a component against the sfn:activity/handler world and list its imports
    Check {
        /// The component (.wasm)
        component: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The configuration file (TOML; see README "Configuration")
    #[arg(long, short, conflicts_with_all = ["activity_arn", "component"], required_unless_present = "activity_arn")]
    config: Option<PathBuf>,
    /// Serve this one activity (instead of --config)
    #[arg(long, requires = "component")]
    activity_arn: Option<String>,
    /// The component for --activity-arn
    #[arg(long, requires = "activity_arn")]
    component: Option<PathBuf>,
    /// With --activity-arn: tasks that may run at once
    #[arg(long, default_value_t = 4)]
    max_concurrency: u32,
    /// With --activity-arn: long polls kept open at once
    #[arg(long, default_value_t = 1)]
    pollers: u32,
    /// With --activity-arn: wall-clock limit per task [default: 60s]
    #[arg(long)]
    timeout: Option<HumanDuration>,
    /// With --activity-arn: memory cap per task [default: 128MiB]
    #[arg(long)]
    memory_limit: Option<ByteSize>,
    /// With --activity-arn: heartbeat every in-flight task at this interval [default: off]
    #[arg(long)]
    heartbeat_interval: Option<HumanDuration>,
    /// The workerName sent on polls [default: hostname-pid]
    #[arg(long)]
    worker_name: Option<String>,
    /// Step Functions endpoint, e.g. http://127.0.0.1:4566 [default: AWS_ENDPOINT_URL or AWS]
    #[arg(long)]
    endpoint_url: Option<String>,
    /// AWS region [default: the AWS configuration chain]
    #[arg(long)]
    region: Option<String>,
    /// How long shutdown waits for in-flight tasks [default: 30s]
    #[arg(long)]
    drain_timeout: Option<HumanDuration>,
}

#[derive(Args)]
struct InvokeArgs {
    /// The component (.wasm)
    component: PathBuf,
    /// The task's JSON input (default: read from stdin)
    #[arg(long, conflicts_with = "input_file")]
    input: Option<String>,
    /// A file holding the task's JSON input
    #[arg(long)]
    input_file: Option<PathBuf>,
    /// How long the guest may run
    #[arg(long, default_value = "30s")]
    timeout: HumanDuration,
    /// The most linear memory the guest may hold
    #[arg(long, default_value = "128MiB")]
    memory_limit: ByteSize,
    /// The activity ARN the guest sees in its context
    #[arg(
        long,
        default_value = "arn:aws:states:local:000000000000:activity:invoke"
    )]
    activity_arn: String,
    /// The worker name the guest sees in its context
    #[arg(long, default_value = "sfn-wasm-worker-invoke")]
    worker_name: String,
    /// Grant an environment variable to the guest (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Grant read-only access to a host directory (repeatable)
    #[arg(long = "dir", value_name = "HOST_PATH:GUEST_PATH", value_parser = parse_dir_grant)]
    dirs: Vec<(PathBuf, String)>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

fn parse_dir_grant(text: &str) -> Result<(PathBuf, String), String> {
    let (host, guest) = text
        .split_once(':')
        .ok_or_else(|| format!("expected HOST_PATH:GUEST_PATH, got {text:?}"))?;
    let host = PathBuf::from(host);
    if !host.is_dir() {
        return Err(format!("{} is not a directory", host.display()));
    }
    Ok((host, guest.to_string()))
}

fn main() -> ExitCode {
    quiet_library_backtraces();
    let cli = Cli::parse();
    init_logging(&cli.global);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// With `RUST_BACKTRACE=1` set (common in production, for panics), std also captures a
/// backtrace for every library error created, and wasmtime creates some on its happy path
/// (dropping a store): that cost 5 µs of a 20 µs task. `RUST_LIB_BACKTRACE=0` keeps panic
/// backtraces and turns the others off; set `RUST_LIB_BACKTRACE=1` to get them back.
/// Called first thing in `main`, before any thread exists.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

fn init_logging(global: &GlobalArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&global.log).unwrap_or_else(|err| {
        eprintln!(
            "warning: bad --log filter {:?} ({err}); using \"info\"",
            global.log
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if global.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn cache_setting(global: &GlobalArgs) -> CacheSetting {
    match (&global.cache_dir, global.no_cache) {
        (_, true) => CacheSetting::Disabled,
        (Some(dir), false) => CacheSetting::Directory(dir.clone()),
        (None, false) => CacheSetting::Default,
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let cache = cache_setting(&cli.global);
    match cli.command {
        Command::Run(args) => serve(args, cli.global).await,
        Command::Invoke(args) => invoke(args, cache).await,
        Command::Check { component } => check(component, cache),
    }
}

/// Builds the configuration from --config or the single-activity flags; flags given with
/// --config override its `[worker]` section.
fn run_config(args: &RunArgs) -> Result<Config> {
    let mut config = match (&args.config, &args.activity_arn, &args.component) {
        (Some(path), _, _) => Config::load(path)?,
        (None, Some(arn), Some(component)) => {
            let mut activity = ActivityConfig::new(arn.clone(), component.clone());
            activity.max_concurrency = args.max_concurrency;
            activity.pollers = args.pollers;
            activity.timeout = args.timeout;
            activity.memory_limit = args.memory_limit;
            activity.heartbeat_interval = args.heartbeat_interval;
            Config {
                worker: Default::default(),
                activities: vec![activity],
            }
        }
        _ => anyhow::bail!("give --config FILE, or --activity-arn ARN with --component FILE"),
    };
    let worker = &mut config.worker;
    worker.name = args.worker_name.clone().or(worker.name.take());
    worker.endpoint_url = args.endpoint_url.clone().or(worker.endpoint_url.take());
    worker.region = args.region.clone().or(worker.region.take());
    worker.drain_timeout = args.drain_timeout.or(worker.drain_timeout);
    config.validate()?;
    Ok(config)
}

async fn serve(args: RunArgs, global: GlobalArgs) -> Result<ExitCode> {
    let config = run_config(&args)?;
    let cache = match (&global.cache_dir, &config.worker.cache_dir, global.no_cache) {
        (_, _, true) => CacheSetting::Disabled,
        (Some(dir), _, false) | (None, Some(dir), false) => CacheSetting::Directory(dir.clone()),
        (None, None, false) => CacheSetting::Default,
    };
    let runtime = Runtime::new(&EngineSettings {
        max_concurrent_tasks: config.total_concurrency(),
        max_memory_bytes: config.max_memory_limit(),
        cache,
    })?;
    let client = sfn::SfnClient::new(&sfn::load_sdk_config(&config.worker).await);
    let worker = Worker::new(&runtime, &config, client)?;
    release_freed_memory();
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        if let Err(err) = shutdown::trigger_on_signals(trigger).await {
            tracing::error!(error = %err, "cannot listen for SIGTERM/SIGINT");
        }
    });
    match worker.run(shutdown).await {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            tracing::error!("{err:#}");
            Ok(ExitCode::from(EXIT_TASK_FAILED))
        }
    }
}

async fn invoke(args: InvokeArgs, cache: CacheSetting) -> Result<ExitCode> {
    let input = read_input(&args)?;
    serde_json::from_str::<serde::de::IgnoredAny>(&input)
        .with_context(|| "the task input is not JSON; Step Functions only sends JSON inputs")?;
    let runtime = Runtime::new(&EngineSettings {
        max_concurrent_tasks: 1,
        max_memory_bytes: args.memory_limit.0,
        cache,
    })?;
    let guest = runtime.load(&args.component)?;
    let heartbeat = Arc::new(CountingHeartbeat::default());
    let task = Task {
        input,
        activity_arn: args.activity_arn.into(),
        worker_name: args.worker_name.into(),
        task_id: runtime::task_id(&format!(
            "invoke-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        )),
        heartbeat: heartbeat.clone(),
        interrupt: Interrupt::default(),
    };
    let limits = TaskLimits {
        timeout: args.timeout.0,
        memory_limit: args.memory_limit.0,
    };
    let grants = Grants {
        env: args.env,
        read_only_dirs: args.dirs,
    };
    let (end, stats) = guest.run(task, &limits, &grants).await;
    for (stream, tail) in [
        ("stdout", &stats.stdout_tail),
        ("stderr", &stats.stderr_tail),
    ] {
        if !tail.is_empty() {
            eprintln!("--- guest {stream} ---\n{}", tail.trim_end());
        }
    }
    tracing::info!(
        elapsed_ms = stats.elapsed.as_secs_f64() * 1e3,
        peak_memory = stats.peak_memory,
        heartbeats = heartbeat.count(),
        "task finished"
    );
    let TaskEnd::Report(outcome) = end else {
        unreachable!("invoke never interrupts its task");
    };
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(if outcome.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_TASK_FAILED)
    })
}

fn read_input(args: &InvokeArgs) -> Result<String> {
    if let Some(input) = &args.input {
        return Ok(input.clone());
    }
    if let Some(path) = &args.input_file {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading --input-file {}", path.display()));
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the task input from stdin (or pass --input / --input-file)")?;
    Ok(input)
}

fn check(component: PathBuf, cache: CacheSetting) -> Result<ExitCode> {
    let runtime = Runtime::new(&EngineSettings {
        max_concurrent_tasks: 1,
        max_memory_bytes: 128 << 20,
        cache,
    })?;
    let report = runtime.inspect(&component)?;
    println!("component: {}", component.display());
    println!("world:     {WORLD}");
    println!("imports:");
    for import in &report.imports {
        println!(
            "  {:<45} {:<9} {}",
            import.name, import.kind, import.provider
        );
    }
    println!("exports:");
    for export in &report.exports {
        println!("  {export}");
    }
    match report.verdict {
        Ok(()) => {
            println!("ok: this host can run it");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            println!("NOT RUNNABLE: {err:#}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
    }
}
