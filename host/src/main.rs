//! The `sfn-wasm-worker` command line: `run` (the worker), `invoke` and `check`. A thin
//! layer: flags become a [`Config`] or an [`ActivityConfig`], whose defaults live in
//! `config`; the work is done by the library.

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sfn_wasm_worker::config::units::{ByteSize, HumanDuration};
use sfn_wasm_worker::config::{
    ActivityConfig, Config, DEFAULT_MAX_CONCURRENCY, DEFAULT_MEMORY_LIMIT, DEFAULT_POLLERS,
    DEFAULT_TIMEOUT,
};
use sfn_wasm_worker::registry::reference::OciReference;
use sfn_wasm_worker::registry::ComponentRegistry;
use sfn_wasm_worker::sandbox::capability::CapabilityFlags;
use sfn_wasm_worker::sandbox::cpu_share;
use sfn_wasm_worker::sandbox::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::sandbox::host_api::{CountingHeartbeat, Interrupt};
use sfn_wasm_worker::sandbox::{Runtime, Task, TaskEnd, TaskLimits, WORLD};
use sfn_wasm_worker::scaffold::{self, Language};
use sfn_wasm_worker::worker::sfn::{self, ActivityClients};
use sfn_wasm_worker::worker::traces::Traces;
use sfn_wasm_worker::worker::{reload, shutdown, ReloadSource, Worker};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
/// Exit code after a second SIGTERM/SIGINT while the worker was still loading.
const EXIT_INTERRUPTED: u8 = 130;

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
    /// Directory of compiled components [default: `[worker] cache_dir`, else ~/.cache/sfn-wasm-worker]
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
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event
    Text,
    /// One JSON object per event
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Step Functions activities until SIGTERM/SIGINT, then drain; SIGHUP reloads the config
    Run(RunArgs),
    /// Run one task locally and print its outcome as Step Functions would get it
    Invoke(InvokeArgs),
    /// Check a component against the sfn:activity/handler world and list its imports
    Check {
        /// The component (.wasm)
        component: PathBuf,
    },
    /// Precompile a component for this worker (checked against the world): `run` and `invoke`
    /// then load it without compiling, e.g. on a new machine or in a container image
    Compile {
        /// The component (.wasm)
        component: PathBuf,
        /// Where to write the precompiled component
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Push a component to an OCI registry (the Wasm OCI artifact layout) and print the
    /// reference by digest to put in the activity's `component`
    Push {
        /// The component (.wasm), checked against the world first
        component: PathBuf,
        /// Where to: oci://REGISTRY/REPOSITORY:TAG
        reference: String,
        /// Reach the registry over plain http (as `[worker] insecure_registries` does; loopback
        /// registries always are)
        #[arg(long)]
        insecure: bool,
    },
    /// Start a new guest project: a working handler, its build command and a sample input
    New {
        /// The guest's language
        #[arg(long, value_enum)]
        lang: Language,
        /// The project's name (a new directory)
        name: String,
        /// Where to create it
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// The `run` flags that describe the one activity of `--activity-arn`: refused with `--config`,
/// whose file describes its activities itself.
const SINGLE_ACTIVITY_FLAGS: [&str; 9] = [
    "activity_arn",
    "component",
    "max_concurrency",
    "pollers",
    "timeout",
    "memory_limit",
    "heartbeat_interval",
    "instance_reuse",
    "ready_instances",
];

#[derive(Args)]
struct RunArgs {
    /// The configuration file (TOML; see README "Configuration")
    #[arg(long, short, required_unless_present = "activity_arn", conflicts_with_all = SINGLE_ACTIVITY_FLAGS)]
    config: Option<PathBuf>,
    /// Serve this one activity (instead of --config)
    #[arg(long, requires = "component")]
    activity_arn: Option<String>,
    /// The component for --activity-arn
    #[arg(long, requires = "activity_arn")]
    component: Option<PathBuf>,
    /// With --activity-arn: tasks that may run at once
    #[arg(long, default_value_t = DEFAULT_MAX_CONCURRENCY)]
    max_concurrency: u32,
    /// With --activity-arn: long polls kept open at once
    #[arg(long, default_value_t = DEFAULT_POLLERS)]
    pollers: u32,
    #[command(flatten)]
    limits: LimitArgs,
    /// With --activity-arn: heartbeat every in-flight task at this interval [default: off]
    #[arg(long)]
    heartbeat_interval: Option<HumanDuration>,
    /// With --activity-arn: tasks one instance serves in turn (README "Instances") [default: 1, a fresh instance per task]
    #[arg(long)]
    instance_reuse: Option<u32>,
    /// With --activity-arn: fresh instances made ahead of tasks [default: 1]
    #[arg(long)]
    ready_instances: Option<u32>,
    /// With --activity-arn: what the guest is granted (each capability's flags)
    #[command(flatten, next_help_heading = "What the guest is granted")]
    capabilities: CapabilityFlags,
    /// The workerName sent on polls (overrides `[worker] name`) [default: hostname-pid]
    #[arg(long)]
    worker_name: Option<String>,
    /// Step Functions endpoint, e.g. http://127.0.0.1:4566 [default: AWS_ENDPOINT_URL or AWS]
    #[arg(long)]
    endpoint_url: Option<String>,
    /// AWS region [default: the AWS configuration chain]
    #[arg(long)]
    region: Option<String>,
    /// How long shutdown waits for in-flight tasks (overrides `[worker] drain_timeout`) [default: 30s]
    #[arg(long)]
    drain_timeout: Option<HumanDuration>,
    /// Serve /metrics, /healthz and /readyz here, e.g. 0.0.0.0:9090 (overrides `[worker] metrics_addr`) [default: off]
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Keep a task journal here, a file or directory on local disk, replayed after a crash (overrides `[worker] journal`) [default: none]
    #[arg(long)]
    journal: Option<PathBuf>,
}

/// One activity's per-task limits, for `invoke` and `run --activity-arn`.
#[derive(Args)]
struct LimitArgs {
    /// Wall-clock limit per task
    #[arg(long, default_value_t = HumanDuration(DEFAULT_TIMEOUT))]
    timeout: HumanDuration,
    /// Memory cap per task
    #[arg(long, default_value_t = ByteSize(DEFAULT_MEMORY_LIMIT))]
    memory_limit: ByteSize,
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
    #[command(flatten)]
    limits: LimitArgs,
    /// The activity ARN the guest sees in its context
    #[arg(
        long,
        default_value = "arn:aws:states:local:000000000000:activity:invoke"
    )]
    activity_arn: String,
    /// The worker name the guest sees in its context
    #[arg(long, default_value = "sfn-wasm-worker-invoke")]
    worker_name: String,
    /// What the guest is granted (each capability's flags)
    #[command(flatten, next_help_heading = "What the guest is granted")]
    capabilities: CapabilityFlags,
}

fn main() -> ExitCode {
    quiet_library_backtraces();
    let cli = Cli::parse();
    init_logging(&cli.global);
    // One thread more than the cores' turns (see sandbox::cpu_share).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpu_share::runtime_threads())
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(serve(args, &cli.global)),
        Command::Invoke(args) => runtime.block_on(invoke(args, &cli.global)),
        Command::Check { component } => check(component, &cli.global),
        Command::New { lang, name, dir } => new_project(lang, &name, &dir),
        Command::Compile { component, output } => compile(&component, &output, &cli.global),
        Command::Push {
            component,
            reference,
            insecure,
        } => runtime.block_on(push(&component, &reference, insecure, &cli.global)),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(EXIT_USAGE)
    })
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
    // The SDK's signer traces its signing parameters, the access key id among them: never
    // in the worker's log, whatever the filter asks for.
    let filter = filter.add_directive("aws_sigv4=debug".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The configuration from `--config` or the single-activity flags; `[worker]` flags
/// override the file's `[worker]` section. Not validated yet: [`Worker::new`] does that.
fn run_config(args: &RunArgs) -> Result<Config> {
    let mut config = match (&args.config, &args.activity_arn, &args.component) {
        (Some(path), _, _) => {
            if !args.capabilities.is_empty() {
                anyhow::bail!(
                    "the flags under \"What the guest is granted\" (run --help) are for \
                     --activity-arn; with --config, grant it in the activity's tables in {} \
                     (README \"Configuration\")",
                    path.display()
                );
            }
            Config::load(path)?
        }
        (None, Some(arn), Some(component)) => {
            let mut activity = ActivityConfig::new(arn.clone(), component.clone());
            activity.max_concurrency = args.max_concurrency;
            activity.pollers = args.pollers;
            activity.timeout = Some(args.limits.timeout);
            activity.memory_limit = Some(args.limits.memory_limit);
            activity.heartbeat_interval = args.heartbeat_interval;
            activity.instance_reuse = args.instance_reuse;
            activity.ready_instances = args.ready_instances;
            args.capabilities.clone().apply(&mut activity.capabilities);
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
    worker.metrics_addr = args.metrics_addr.or(worker.metrics_addr);
    worker.journal = args.journal.clone().or(worker.journal.take());
    Ok(config)
}

async fn serve(args: RunArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let source = || match &args.config {
        Some(path) => format!("config file {}", path.display()),
        None => "the --activity-arn flags".to_string(),
    };
    // Signals first: one that comes while components load stops the worker before its
    // first poll, cleanly (at once during pulls; after a compile in progress); a second one
    // before the worker runs exits at once.
    let signals = shutdown::Signals::listen().context("cannot listen for SIGTERM/SIGINT")?;
    let (shutdown, hurry) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(signals.cancel_on_signals(shutdown.clone(), hurry.clone()));
    let worker_hurry = Arc::new(std::sync::OnceLock::<CancellationToken>::new());
    tokio::spawn({
        let worker_hurry = worker_hurry.clone();
        async move {
            hurry.cancelled().await;
            match worker_hurry.get() {
                Some(worker_hurry) => worker_hurry.cancel(),
                None => {
                    eprintln!("second signal while loading: exiting at once");
                    std::process::exit(EXIT_INTERRUPTED.into());
                }
            }
        }
    });
    let mut config = run_config(&args)?;
    let cache = CacheSetting::resolve(
        global.no_cache,
        global.cache_dir.clone().or(config.worker.cache_dir.clone()),
    );
    let registry = Arc::new(ComponentRegistry::new(
        cache.directory().as_deref(),
        &config.worker.insecure_registries,
    )?);
    tokio::select! {
        pulled = registry.pull_all(&mut config) => pulled.with_context(source)?,
        _ = shutdown.cancelled() => {
            tracing::info!("shut down while pulling components, before any poll");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let config = config.validate().with_context(source)?;
    let runtime = Arc::new(Runtime::new(&config.engine_settings(cache))?);
    let clients = ActivityClients::new(sfn::load_sdk_config(&config.worker).await);
    let mut worker = Worker::new(&runtime, &config, clients.own()).with_context(source)?;
    for activity in &config.activities {
        if activity.role_arn.is_some() {
            worker.use_client_for(&activity.arn, clients.for_activity(activity).await)?;
        }
    }
    if let Some(journal) = &config.worker.journal {
        worker.open_journal(journal)?;
    }
    let traces = Traces::start(
        config.worker.otlp_endpoint.as_deref(),
        &config.worker_name(),
    )?
    .map(Arc::new);
    if let Some(traces) = &traces {
        worker.trace_with(traces.clone());
    }
    let reload = worker.reload_with(ReloadSource {
        runtime,
        read_config: Box::new(move || run_config(&args)),
        registry,
        clients,
    });
    release_freed_memory();
    let _ = worker_hurry.set(worker.hurry());
    tokio::spawn(async move {
        if let Err(err) = reload::reload_on_sighup(reload).await {
            tracing::error!(error = %err, "cannot listen for SIGHUP; reloads stay off");
        }
    });
    let ran = worker.run(shutdown).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    match ran {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(err) => {
            tracing::error!("{err:#}");
            Ok(ExitCode::from(EXIT_TASK_FAILED))
        }
    }
}

async fn invoke(args: InvokeArgs, global: &GlobalArgs) -> Result<ExitCode> {
    let input = read_input(&args)?;
    serde_json::from_str::<serde::de::IgnoredAny>(&input)
        .with_context(|| "the task input is not JSON; Step Functions only sends JSON inputs")?;
    let mut activity = ActivityConfig::new(args.activity_arn, args.component);
    activity.timeout = Some(args.limits.timeout);
    activity.memory_limit = Some(args.limits.memory_limit);
    args.capabilities.apply(&mut activity.capabilities);
    let limits = activity.limits();
    let runtime = one_task_runtime(global, limits.memory_limit)?;
    let guest = runtime.load(&activity.component)?;
    let grants = activity.grants(&Default::default());
    grants
        .ready(&activity.arn.as_str().into(), &Default::default())
        .await?;
    guest.check_start_up(&activity.arn, &limits, &grants)?;
    let heartbeat = Arc::new(CountingHeartbeat::default());
    let task = Task {
        input,
        activity_arn: activity.arn.as_str().into(),
        worker_name: args.worker_name.into(),
        task_id: sfn::task_id(&format!(
            "invoke-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        )),
        heartbeat: heartbeat.clone(),
        interrupt: Interrupt::default(),
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
        outbound_requests = stats.usage.outbound.sent(),
        outbound_denied = stats.usage.outbound.denied(),
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

/// A runtime for one task at a time (`invoke`, `check`, `compile`), with the cache the
/// global flags choose.
fn one_task_runtime(global: &GlobalArgs, max_memory_bytes: u64) -> Result<Runtime> {
    Runtime::new(&EngineSettings {
        max_concurrent_tasks: 1,
        max_memory_bytes,
        cache: CacheSetting::resolve(global.no_cache, global.cache_dir.clone()),
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

fn check(component: PathBuf, global: &GlobalArgs) -> Result<ExitCode> {
    let runtime = one_task_runtime(global, DEFAULT_MEMORY_LIMIT)?;
    let report = runtime.inspect(&component, &TaskLimits::default())?;
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

fn new_project(language: Language, name: &str, parent: &Path) -> Result<ExitCode> {
    let dir = scaffold::create(language, name, parent)?;
    println!(
        "created {}: see its README.md to build it and invoke it with input.json",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `push`: checks the component against the world, pushes it, prints the reference by digest.
async fn push(
    component: &Path,
    reference: &str,
    insecure: bool,
    global: &GlobalArgs,
) -> Result<ExitCode> {
    let reference = OciReference::parse(reference).map_err(anyhow::Error::msg)?;
    let runtime = one_task_runtime(global, DEFAULT_MEMORY_LIMIT)?;
    runtime.load(component)?;
    let insecure: Vec<String> = insecure
        .then(|| reference.registry.clone())
        .into_iter()
        .collect();
    let registry = ComponentRegistry::new(None, &insecure)?;
    let pinned = registry.push(component, &reference).await?;
    eprintln!(
        "pushed {} as {reference}; put this in the activity's `component`:",
        component.display()
    );
    println!("{pinned}");
    Ok(ExitCode::SUCCESS)
}

fn compile(component: &Path, output: &Path, global: &GlobalArgs) -> Result<ExitCode> {
    let runtime = one_task_runtime(global, DEFAULT_MEMORY_LIMIT)?;
    let artefact = runtime.precompile(component, &TaskLimits::default())?;
    std::fs::write(output, &artefact).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "{} → {} ({} bytes): give it as the activity's component; it loads without compiling \
         on any machine running this version of sfn-wasm-worker on the same CPU family",
        component.display(),
        output.display(),
        artefact.len()
    );
    Ok(ExitCode::SUCCESS)
}
