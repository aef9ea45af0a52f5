//! The host side of the `sfn:activity/host` interface (`log` and `heartbeat`), configured
//! in `[activity.host]`, and the controls the worker holds over a running task (heartbeat
//! sink, interruption).

use crate::sandbox::bindings::sfn::activity::host as host_interface;
use crate::sandbox::bindings::sfn::activity::host::{Host, LogLevel};
use crate::sandbox::bindings::sfn::activity::types;
use crate::sandbox::capability::{Capability, GrantContext, NoFlags, TaskSetup};
use crate::sandbox::store::TaskState;
use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;
use wasmtime::component::{HasSelf, Linker};

/// The host API capability (`sfn:activity/host`).
pub struct HostApi;

/// `[activity.host]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostApiSettings {
    /// Log lines a guest may write per task; later ones are dropped (default 1 000).
    pub max_log_lines: Option<u32>,
    /// Longest log line kept, in bytes; longer ones are cut on a character boundary
    /// (default 8 192).
    pub max_log_line_bytes: Option<usize>,
}

/// What a task's guest may write to the worker's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Lines per task; later ones are dropped.
    pub lines: u32,
    /// Bytes per line; longer ones are cut.
    pub line_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> LogLimits {
        LogLimits {
            lines: 1_000,
            line_bytes: 8 * 1024,
        }
    }
}

/// What one task used of the host API.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostUsage {
    /// Heartbeats the guest asked for.
    pub heartbeats: u64,
}

impl Capability for HostApi {
    type Settings = HostApiSettings;
    type Grant = LogLimits;
    type TaskState = HostState;
    type Usage = HostUsage;
    type Metrics = ();
    type Flags = NoFlags;

    fn validate(settings: &HostApiSettings) -> anyhow::Result<()> {
        if settings.max_log_line_bytes == Some(0) {
            bail!(
                "key `max_log_line_bytes` must be more than 0 (set max_log_lines = 0 for no log)"
            );
        }
        Ok(())
    }

    fn grant(settings: &HostApiSettings, _: &GrantContext<'_>) -> LogLimits {
        let defaults = LogLimits::default();
        LogLimits {
            lines: settings.max_log_lines.unwrap_or(defaults.lines),
            line_bytes: settings.max_log_line_bytes.unwrap_or(defaults.line_bytes),
        }
    }

    fn usage(state: &HostState) -> HostUsage {
        HostUsage {
            heartbeats: state.heartbeats_requested,
        }
    }

    fn task_state(limits: &LogLimits, setup: &TaskSetup<'_>) -> anyhow::Result<HostState> {
        let task = setup.task;
        Ok(HostState::new(
            task.activity_arn.clone(),
            task.task_id.clone(),
            task.heartbeat.clone(),
            task.interrupt.clone(),
            *limits,
        ))
    }

    fn link(linker: &mut Linker<TaskState>) -> anyhow::Result<()> {
        host_interface::add_to_linker::<_, HasSelf<_>>(linker, |state: &mut TaskState| {
            &mut state.capabilities_and_table().0.host
        })
        .map_err(anyhow::Error::from)
        .context("linking the sfn:activity host interface")
    }

    fn provider(import: &str) -> Option<&'static str> {
        import
            .starts_with("sfn:activity/")
            .then_some("sfn-wasm-worker (log, heartbeat)")
    }
}

/// A boxed future returned by [`Heartbeat::beat`].
pub type BeatFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Where a task's heartbeats go: SendTaskHeartbeat in the worker, a counter in `invoke`.
pub trait Heartbeat: Send + Sync {
    /// Heartbeats the task now. `Err(reason)` means the task is timed out or cancelled.
    fn beat(&self) -> BeatFuture<'_>;
}

/// A heartbeat sink that only counts (used by `invoke`, which has no Step Functions task).
#[derive(Debug, Default)]
pub struct CountingHeartbeat {
    count: std::sync::atomic::AtomicU64,
}

impl CountingHeartbeat {
    /// Heartbeats received so far.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Heartbeat for CountingHeartbeat {
    fn beat(&self) -> BeatFuture<'_> {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

/// Why the worker stopped a task before it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptReason {
    /// The worker is shutting down and its drain timeout ran out: report
    /// `Worker.ShuttingDown` so the state machine retries the task elsewhere.
    ShuttingDown,
    /// Step Functions no longer knows the task (timed out, execution stopped): report
    /// nothing. The string says how the worker found out.
    TaskGone(String),
}

/// A one-shot signal that stops a running guest at its next epoch tick (within
/// [`crate::sandbox::engine::EPOCH_TICK`]), or at once if it is blocked in a host call.
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    inner: Arc<InterruptInner>,
}

#[derive(Debug, Default)]
struct InterruptInner {
    reason: OnceLock<InterruptReason>,
    notify: Notify,
}

impl Interrupt {
    /// Stops the task for `reason`; the first reason given wins.
    pub fn trigger(&self, reason: InterruptReason) {
        let _ = self.inner.reason.set(reason);
        self.inner.notify.notify_waiters();
    }

    /// The reason, once triggered.
    pub fn reason(&self) -> Option<&InterruptReason> {
        self.inner.reason.get()
    }

    /// Resolves once triggered.
    pub async fn triggered(&self) -> InterruptReason {
        loop {
            let notified = self.inner.notify.notified();
            if let Some(reason) = self.reason() {
                return reason.clone();
            }
            notified.await;
        }
    }
}

/// Per-task state behind the `host` interface.
pub struct HostState {
    activity_arn: Arc<str>,
    task_id: String,
    heartbeat: Arc<dyn Heartbeat>,
    interrupt: Interrupt,
    heartbeats_requested: u64,
    log_lines: u32,
    log_limits: LogLimits,
}

impl HostState {
    /// The host side of one task: its log fields and limits, heartbeat sink and interrupt.
    pub fn new(
        activity_arn: Arc<str>,
        task_id: String,
        heartbeat: Arc<dyn Heartbeat>,
        interrupt: Interrupt,
        log_limits: LogLimits,
    ) -> HostState {
        HostState {
            activity_arn,
            task_id,
            heartbeat,
            interrupt,
            heartbeats_requested: 0,
            log_lines: 0,
            log_limits,
        }
    }

    /// The task's interrupt.
    pub fn interrupt(&self) -> &Interrupt {
        &self.interrupt
    }
}

/// The `types` interface has no functions; the generated bindings still want it implemented.
impl types::Host for HostState {}

impl Host for HostState {
    fn log(&mut self, level: LogLevel, mut message: String) {
        let LogLimits { lines, line_bytes } = self.log_limits;
        self.log_lines = self.log_lines.saturating_add(1);
        if self.log_lines > lines {
            if self.log_lines == lines.saturating_add(1) {
                tracing::warn!(
                    activity = %self.activity_arn,
                    task_id = %self.task_id,
                    "guest wrote more than {lines} log lines ([activity.host] max_log_lines); \
                     dropping the rest of this task's"
                );
            }
            return;
        }
        if message.len() > line_bytes {
            let cut = (0..=line_bytes)
                .rev()
                .find(|&i| message.is_char_boundary(i))
                .unwrap_or(0);
            message.truncate(cut);
            message.push('…');
        }
        let (activity, task_id) = (&*self.activity_arn, self.task_id.as_str());
        match level {
            LogLevel::Trace => tracing::trace!(target: "guest", activity, task_id, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "guest", activity, task_id, "{message}"),
            LogLevel::Info => tracing::info!(target: "guest", activity, task_id, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "guest", activity, task_id, "{message}"),
            LogLevel::Error => tracing::error!(target: "guest", activity, task_id, "{message}"),
        }
    }

    async fn heartbeat(&mut self) -> Result<(), String> {
        self.heartbeats_requested += 1;
        if let Some(reason) = self.interrupt.reason() {
            return Err(format!("the task was stopped: {reason:?}"));
        }
        self.heartbeat.beat().await
    }
}
