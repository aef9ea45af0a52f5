//! Graceful shutdown: a signal any task can wait on, triggered by SIGTERM/SIGINT or by code.

use tokio::sync::watch;

/// Triggers a [`Shutdown`].
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// A shutdown signal that can be checked or awaited; cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// A linked trigger and signal.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Starts the shutdown (idempotent).
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }
}

impl Shutdown {
    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Resolves once shutdown has started.
    pub async fn triggered(&self) {
        let mut receiver = self.receiver.clone();
        // An error means every trigger is gone: nobody can shut us down, so wait forever.
        if receiver.wait_for(|&started| started).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Triggers `trigger` on the first SIGTERM or SIGINT.
pub async fn trigger_on_signals(trigger: ShutdownTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(
        signal = name,
        "shutting down: no new polls; running what open polls bring, then draining"
    );
    trigger.trigger();
    Ok(())
}
