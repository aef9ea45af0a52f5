//! Helpers shared by the end-to-end tests: guest artefacts (built on demand), one runtime
//! per test binary, and task construction.
#![allow(dead_code)] // each test binary uses its own subset

pub mod http_service;
pub mod localstack;
pub mod sigv4_service;

use sfn_fake::FakeSfn;
use sfn_wasm_worker::config::Config;
use sfn_wasm_worker::sandbox::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::sandbox::host_api::{CountingHeartbeat, Interrupt};
use sfn_wasm_worker::sandbox::outcome::Outcome;
use sfn_wasm_worker::sandbox::{Grants, Task, TaskEnd, TaskLimits, TaskStats};
use sfn_wasm_worker::sandbox::{Guest, Runtime};
use sfn_wasm_worker::worker::sfn::SfnClient;
use sfn_wasm_worker::worker::{StatsSnapshot, Worker, WorkerStats};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Writes `config` as the TOML file `path`: a value shaped like the file (`worker` = {...},
/// `activity` = [{...}, ...], capability tables nested in their activity). Every test's
/// configuration file is written here, so the file's shape lives in one place.
pub fn write_config(path: &Path, config: serde_json::Value) {
    let text = toml::to_string(&config).expect("a config value writes as TOML");
    std::fs::write(path, text).unwrap();
}

/// The path of a file as a config value.
pub fn path_value(path: &Path) -> serde_json::Value {
    serde_json::Value::String(path.to_str().expect("test paths are UTF-8").to_string())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The built component for `name` (see guest/build.sh), building it if it is missing.
pub fn guest_path(name: &str) -> PathBuf {
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let path = repo_root()
        .join("target/guests")
        .join(format!("{name}.wasm"));
    let _guard = BUILD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !path.exists() {
        let status = Command::new("bash")
            .arg(repo_root().join("guest/build.sh"))
            .arg(name)
            .status()
            .expect("running guest/build.sh");
        assert!(
            status.success(),
            "guest/build.sh {name} failed; see its output above"
        );
    }
    path
}

/// The compilation cache the tests share (large guests compile once per machine).
pub fn cache_dir() -> PathBuf {
    repo_root().join("target/wasmtime-cache")
}

/// The worker binary, with the tests' compilation cache and static test AWS credentials.
pub fn worker_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sfn-wasm-worker"));
    command
        .env("SFN_WASM_WORKER_CACHE_DIR", cache_dir())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test");
    command
}

/// A worker serving a configuration in this process, against the Step Functions fake, with
/// the tests' one runtime; [`RunningWorker::stop`] shuts it down and waits for its drain.
pub struct RunningWorker {
    /// Cancel it to start the shutdown (`stop` does).
    pub shutdown: CancellationToken,
    /// The worker's run, ending with its final counts.
    pub handle: tokio::task::JoinHandle<anyhow::Result<StatsSnapshot>>,
    /// The worker's counters, live.
    pub stats: WorkerStats,
}

impl RunningWorker {
    /// Validates `config` and starts serving it against `fake`.
    pub async fn start(fake: &FakeSfn, config: Config) -> RunningWorker {
        let client = SfnClient::new(&fake.sdk_config().await);
        let worker = Worker::new(runtime(), &config.validate().unwrap(), client)
            .expect("starting the worker");
        let stats = worker.stats();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        RunningWorker {
            shutdown,
            handle,
            stats,
        }
    }

    /// Shuts the worker down and waits (at most a minute) for its drain; its final counts.
    pub async fn stop(self) -> StatsSnapshot {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the worker did not stop")
            .unwrap()
            .expect("the worker failed")
    }
}

/// The worker binary running `config` at log level `log`, its stderr read as it is written
/// (a full pipe would stop the worker); [`LoggedWorker::stop`] SIGTERMs it and returns the log.
pub struct LoggedWorker {
    /// The worker's process.
    pub child: std::process::Child,
    log: std::thread::JoinHandle<String>,
}

impl LoggedWorker {
    /// Starts the worker on `config` logging at `log` (an `SFN_WASM_WORKER_LOG` filter).
    pub fn start(config: &Path, log: &str) -> LoggedWorker {
        let mut child = worker_command()
            .args(["run", "--config"])
            .arg(config)
            .env("SFN_WASM_WORKER_LOG", log)
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut log = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut log).unwrap();
            String::from_utf8_lossy(&log).into_owned()
        });
        LoggedWorker { child, log }
    }

    /// SIGTERMs the worker, asserts it exits 0, and returns everything it logged.
    pub fn stop(mut self) -> String {
        send_signal("TERM", self.child.id());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the worker exited {status}");
        self.log.join().unwrap()
    }

    /// SIGKILLs the worker (nothing of it runs after this) and returns everything it logged.
    pub fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.log.join().unwrap()
    }
}

/// Sends the signal `name` (e.g. `TERM`, `HUP`) to process `pid`.
pub fn send_signal(name: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success(), "kill -{name} {pid}: {sent}");
}

/// Waits, polling every 10 ms, until `child` exits; `None` if it is still running after
/// `limit`.
pub async fn wait_for_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Default limits for test tasks.
pub fn limits() -> TaskLimits {
    TaskLimits {
        timeout: Duration::from_secs(20),
        memory_limit: 128 << 20,
    }
}

/// One runtime per test binary, sized for the tests' concurrency.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(&EngineSettings {
            max_concurrent_tasks: 64,
            max_memory_bytes: 256 << 20,
            cache: CacheSetting::Directory(cache_dir()),
        })
        .expect("creating the runtime")
    })
}

/// The loaded guest `name`, compiled once per test binary.
pub fn guest(name: &str) -> Guest {
    static GUESTS: OnceLock<Mutex<HashMap<String, Guest>>> = OnceLock::new();
    let guests = GUESTS.get_or_init(Default::default);
    let path = guest_path(name);
    let mut guests = guests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    guests
        .entry(name.to_string())
        .or_insert_with(|| runtime().load(&path).expect("loading the guest"))
        .clone()
}

/// A task with `input` and a counting heartbeat.
pub fn task(input: &str) -> (Task, Arc<CountingHeartbeat>) {
    let heartbeat = Arc::new(CountingHeartbeat::default());
    let task = Task {
        input: input.to_string(),
        activity_arn: "arn:aws:states:us-east-1:123456789012:activity:tests".into(),
        worker_name: "test-worker".into(),
        task_id: sfn_wasm_worker::worker::sfn::task_id("token"),
        heartbeat: heartbeat.clone(),
        interrupt: Interrupt::default(),
    };
    (task, heartbeat)
}

/// Runs `input` on guest `name` with `limits` and no grants; returns the reported outcome.
pub async fn run_with(name: &str, input: &str, limits: &TaskLimits) -> (Outcome, TaskStats) {
    let (task, _) = task(input);
    match guest(name).run(task, limits, &Grants::default()).await {
        (TaskEnd::Report(outcome), stats) => (outcome, stats),
        (TaskEnd::Abandoned(why), _) => panic!("task unexpectedly abandoned: {why}"),
    }
}

/// Runs `input` on guest `name` with the default limits.
pub async fn run(name: &str, input: &str) -> Outcome {
    run_with(name, input, &limits()).await.0
}

/// Asserts that `outcome` is a failure named `error`; returns its cause.
pub fn expect_failure(outcome: &Outcome, error: &str) -> String {
    match outcome {
        Outcome::Failed { error: got, cause } if got == error => cause.clone(),
        other => panic!("expected failure {error}, got {other:?}"),
    }
}

/// Asserts that `outcome` succeeded; returns its output parsed.
pub fn expect_success(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Succeeded { output } => serde_json::from_str(output).expect("output is JSON"),
        other => panic!("expected success, got {other:?}"),
    }
}

/// A component implementing the handler world whose core module runs `start_code` in a start
/// function when it is instantiated (for tests of start-up failures: its `handle` is never
/// reached when the start code traps).
pub fn handler_component(start_code: &str) -> String {
    format!(
        r#"(component
  (type $context' (record (field "activity-arn" string) (field "worker-name" string)
                          (field "task-id" string) (field "deadline-ms" u64)))
  (export $context "task-context" (type $context'))
  (type $error' (record (field "error" string) (field "cause" string)))
  (export $error "task-error" (type $error'))
  (core module $guest
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 64))
    (func $start {start_code})
    (start $start)
    (func (export "handle") (param i32 i32 i32 i32 i32 i32 i32 i32 i64) (result i32)
      (i32.const 0)))
  (core instance $guest (instantiate $guest))
  (func (export "handle") (param "input" string) (param "context" $context)
    (result (result string (error $error)))
    (canon lift (core func $guest "handle") (memory (core memory $guest "memory"))
      (realloc (core func $guest "realloc")))))"#
    )
}
