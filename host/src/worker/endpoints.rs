//! The worker's HTTP endpoints on one listener (`[worker] metrics_addr`): `/metrics` (see
//! [`crate::worker::metrics`]), `/healthz` (the process serves) and `/readyz` (every
//! activity's component is loaded and it is polling: a poll answered, or open for a second
//! without an error; not while draining).

use crate::worker::metrics::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` answers from.
pub struct Readiness {
    /// One flag per activity served now, set once a poll of it was answered or stayed open
    /// for a second without an error.
    polling: RwLock<Option<Vec<Arc<AtomicBool>>>>,
    /// Cancelled when the worker starts draining.
    draining: CancellationToken,
}

impl Readiness {
    /// Not ready from the moment `draining` is cancelled.
    pub fn new(draining: CancellationToken) -> Readiness {
        Readiness {
            polling: RwLock::default(),
            draining,
        }
    }

    /// The activities served from now on: ready once each one is polling (a poll answered,
    /// or open for a second without an error).
    pub fn serve(&self, polling: Vec<Arc<AtomicBool>>) {
        *self.polling.write().unwrap() = Some(polling);
    }

    fn check(&self) -> Result<(), &'static str> {
        use std::sync::atomic::Ordering;
        if self.draining.is_cancelled() {
            return Err("draining");
        }
        let polling = self.polling.read().unwrap();
        let Some(polling) = polling.as_ref() else {
            return Err("starting: readying the activities (fetching their secrets)");
        };
        if !polling
            .iter()
            .all(|answered| answered.load(Ordering::Relaxed))
        {
            return Err("waiting for every activity's first poll to be accepted");
        }
        Ok(())
    }
}

/// Binds `addr` for the metrics and health endpoints; the error names the address and key.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| {
        anyhow::anyhow!(
            "cannot listen on {addr} for metrics and health ({err}); change `[worker] metrics_addr` or --metrics-addr"
        )
    })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = answer(request.uri().path(), &metrics, &readiness);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(path: &str, metrics: &Metrics, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match readiness.check() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}
