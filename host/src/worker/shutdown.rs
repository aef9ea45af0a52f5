//! Shutdown by signal: the first SIGTERM or SIGINT starts a graceful shutdown (no new polls,
//! drain), a second one stops at once ([`crate::worker::Worker::hurry`]). Listened for from
//! the start of `run`, so that a signal while the worker is still loading its components
//! stops it cleanly (exit 0, before any poll) instead of killing it.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT, caught from when [`Signals::listen`] returns.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Catches SIGTERM and SIGINT from now on (instead of their default action, exiting at
    /// once). Call it inside the tokio runtime.
    pub fn listen() -> std::io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Cancels `shutdown` on the first signal, and `hurry` on the second.
    pub async fn cancel_on_signals(
        mut self,
        shutdown: CancellationToken,
        hurry: CancellationToken,
    ) {
        let name = self.next().await;
        tracing::info!(
            signal = name,
            "shutting down: no new polls; running what open polls bring, then draining \
             (a second signal stops at once)"
        );
        shutdown.cancel();
        let name = self.next().await;
        tracing::warn!(signal = name, "second signal: stopping at once");
        hurry.cancel();
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
