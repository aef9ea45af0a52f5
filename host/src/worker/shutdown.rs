//! Shutdown by signal: the first SIGTERM or SIGINT starts a graceful shutdown (no new polls,
//! drain), a second one stops at once ([`crate::worker::Worker::hurry`]).

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGTERM or SIGINT, and `hurry` on the second.
pub async fn cancel_on_signals(
    shutdown: CancellationToken,
    hurry: CancellationToken,
) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut next_signal = async || {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    };
    let name = next_signal().await;
    tracing::info!(
        signal = name,
        "shutting down: no new polls; running what open polls bring, then draining \
         (a second signal stops at once)"
    );
    shutdown.cancel();
    let name = next_signal().await;
    tracing::warn!(signal = name, "second signal: stopping at once");
    hurry.cancel();
    Ok(())
}
