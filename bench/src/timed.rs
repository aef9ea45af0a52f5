//! Where a worker run's time goes: the handler's own time per task, measured inside the
//! worker loop, and the whole process's CPU per task.

use sfn_wasm_worker::sandbox::{Grants, HandlerFuture, Task, TaskHandler, TaskLimits};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A [`TaskHandler`] that times every run of the handler it wraps (a wasm guest: store,
/// instantiation, call, drop; the native handler: the function call).
pub struct TimedHandler {
    inner: Arc<dyn TaskHandler>,
    total_nanos: AtomicU64,
    runs: AtomicU64,
}

impl TimedHandler {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn TaskHandler>) -> TimedHandler {
        TimedHandler {
            inner,
            total_nanos: AtomicU64::new(0),
            runs: AtomicU64::new(0),
        }
    }

    /// The mean time of one run so far.
    pub fn mean(&self) -> Duration {
        let runs = self.runs.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.total_nanos.load(Ordering::Relaxed) / runs)
    }
}

impl TaskHandler for TimedHandler {
    fn run<'a>(
        &'a self,
        task: Task,
        limits: &'a TaskLimits,
        grants: &'a Grants,
    ) -> HandlerFuture<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let ended = self.inner.run(task, limits, grants).await;
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
            self.runs.fetch_add(1, Ordering::Relaxed);
            ended
        })
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// CPU time (user + system, every thread) this process has used so far.
pub fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// CPU time (user + system, every thread, including exited ones) process `pid` has used
/// so far, from its CPU clock.
pub fn other_process_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid, writable clockid_t.
    let status = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if status != 0 {
        anyhow::bail!("clock_getcpuclockid({pid}) failed: {status}");
    }
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; `clock` was just given by the kernel.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        anyhow::bail!("clock_gettime of pid {pid} failed");
    }
    Ok(Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}
