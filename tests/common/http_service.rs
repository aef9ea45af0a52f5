//! A real HTTP/1.1 service on 127.0.0.1 for the outbound tests (not a mock of the client):
//! `/echo` answers with what it received, `/never` never answers, `/endless` streams a body
//! that never ends. It counts the requests that reached it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The running service; stops when dropped.
pub struct HttpService {
    /// Its port on 127.0.0.1.
    pub port: u16,
    requests: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for HttpService {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl HttpService {
    /// Starts the service on a free port.
    pub async fn start() -> HttpService {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        answer(request)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpService {
            port,
            requests,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests that reached the service so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    match request.uri().path() {
        "/never" => std::future::pending().await,
        "/endless" => {
            let body = EndlessBody {
                chunk: Bytes::from(vec![b'z'; 16 * 1024]),
            };
            Ok(Response::new(BodyExt::boxed(body)))
        }
        _ => {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let host = request
                .headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let echo = json!({
                "method": method,
                "path": path,
                "host": host,
                "body": String::from_utf8_lossy(&body),
            });
            let response = Response::builder()
                .header("content-type", "application/json")
                .header("x-test", "yes")
                .body(Full::new(Bytes::from(echo.to_string())).boxed())
                .unwrap();
            Ok(response)
        }
    }
}

/// A response body that never ends: 16 KiB chunks as fast as the client reads them.
struct EndlessBody {
    chunk: Bytes,
}

impl http_body::Body for EndlessBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}
