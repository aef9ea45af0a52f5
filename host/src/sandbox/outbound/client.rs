//! Sending one admitted request: resolve the name, keep only addresses the allowlist lets
//! the guest reach, connect to one of those very addresses (no second lookup), TLS for
//! `https`, HTTP/1.1, and a response body that stops at the size cap and the deadline.

use crate::sandbox::outbound::policy::{Allowlist, OriginScheme, Target, TargetHost};
use crate::sandbox::outbound::{OutboundLimits, RequestLog};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::task::AbortOnDropHandle;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// A boxed future of the addresses a name resolves to.
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a host name into addresses. The system's resolver in production; tests inject
/// their own to check what happens when an allowed name resolves to a protected address.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host` at `port`.
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> ResolveFuture {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// The response a send produces, and the future of its connection's I/O (always done here:
/// the connection is driven by its own task, aborted when the response is dropped).
pub type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// What one send needs besides the request.
pub struct SendPlan {
    /// Where the request goes (its own scheme and authority).
    pub target: Target,
    /// The activity's allowlist, to vet the resolved addresses.
    pub allowlist: Arc<Allowlist>,
    /// The activity's limits.
    pub limits: OutboundLimits,
    /// The guest's own timeouts, if it set any (they can only shorten ours).
    pub options: Option<RequestOptions>,
    /// The activity's resolver.
    pub resolver: Arc<dyn Resolver>,
    /// The activity's bound on requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// When the whole request must be over: the request timeout, or the task's deadline if
    /// that comes first.
    pub deadline: Instant,
    /// The request's `debug` log line, written when it ends.
    pub log: RequestLog,
}

/// The sending half of an HTTP/1.1 connection, and the handle of the task driving it.
type Connection = (
    hyper::client::conn::http1::SendRequest<WasiBody>,
    AbortOnDropHandle<()>,
);

/// Sends `request` as `plan` says: within the deadline, a slot of the activity's in-flight
/// bound, a vetted connection and the first byte of the response; then its body, capped.
pub async fn send(plan: SendPlan, request: http::Request<WasiBody>) -> SendResult {
    let SendPlan {
        target,
        allowlist,
        limits,
        options,
        resolver,
        in_flight,
        deadline,
        mut log,
    } = plan;
    let connect_timeout = shorter(
        limits.connect_timeout,
        options.and_then(|o| o.connect_timeout),
    );
    let first_byte_timeout = shorter(
        limits.first_byte_timeout,
        options.and_then(|o| o.first_byte_timeout),
    );
    let (mut head, body) = request.into_parts();
    // The body goes to hyper only once there is a connection; until then it stays here, so
    // that a request refused before it is sent can still take the guest's body (below).
    let mut unsent = Some(body);
    let setup = async {
        head.uri = origin_form(&head.uri)?;
        let permit = tokio::time::timeout(connect_timeout, in_flight.acquire_owned())
            .await
            .map_err(|_| Error::ConnectionLimitReached)?
            .expect("the in-flight semaphore is never closed");
        let connection = open(&target, &allowlist, &*resolver, connect_timeout, &mut log);
        let (mut sender, driver) = connection.await?;
        let body = unsent.take().expect("the body is sent once");
        let request = http::Request::from_parts(head, body);
        let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
            .await
            .map_err(|_| Error::HttpResponseTimeout)??;
        Ok::<_, Error>((response, driver, permit))
    };
    let sent = tokio::time::timeout_at(deadline, setup).await;
    let (response, driver, permit) = match sent.unwrap_or(Err(Error::HttpResponseTimeout)) {
        Ok(sent) => sent,
        Err(error) => {
            log.failed(&error);
            if let Some(body) = unsent {
                discard_unsent(body, deadline);
            }
            return Err(error);
        }
    };
    let (parts, incoming) = response.into_parts();
    log.status = Some(parts.status.as_u16());
    let body = CappedBody {
        incoming,
        limit: limits.max_response_bytes,
        received: 0,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        finished: false,
        log,
        _driver: driver,
        _permit: permit,
    };
    Ok((
        http::Response::from_parts(parts, body.boxed_unsync()),
        Box::new(async { Ok(()) }),
    ))
}

/// A connection to `target` at one of the addresses its name resolves to that the
/// allowlist lets the guest reach (refused addresses are logged), with TLS for `https`.
async fn open(
    target: &Target,
    allowlist: &Allowlist,
    resolver: &dyn Resolver,
    connect_timeout: std::time::Duration,
    log: &mut RequestLog,
) -> Result<Connection, Error> {
    let addresses = resolve(target, resolver, connect_timeout).await?;
    let allowed: Vec<SocketAddr> = addresses
        .iter()
        .copied()
        .filter(|address| allowlist.may_connect(target, address.ip()))
        .collect();
    if allowed.is_empty() {
        log.refused_address(&addresses);
        return Err(Error::DestinationIpProhibited);
    }
    let stream = connect(&allowed, connect_timeout).await?;
    match target.scheme {
        OriginScheme::Http => handshake(stream).await,
        OriginScheme::Https => handshake(tls(target, stream).await?).await,
    }
}

/// The request's URI as it goes on the wire: the request line carries only the path (and
/// query); the authority is in its `host` header.
fn origin_form(uri: &http::Uri) -> Result<http::Uri, Error> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)
}

/// Takes and drops what the guest still writes into the body of a request that failed before
/// it was sent, until the guest finishes it (or the request's deadline). Dropping the body at
/// once would close the guest's body stream, and a guest that writes its body while it waits
/// for the response (as wstd's client does) would see "connection reset" (a closed stream)
/// instead of the response's error code.
pub fn discard_unsent(mut body: WasiBody, deadline: Instant) {
    tokio::spawn(tokio::time::timeout_at(deadline, async move {
        while let Some(Ok(_)) = body.frame().await {}
    }));
}

/// The shorter of our timeout and the guest's, if it set one.
fn shorter(ours: std::time::Duration, guests: Option<std::time::Duration>) -> std::time::Duration {
    guests.map_or(ours, |theirs| theirs.min(ours))
}

/// The addresses of `target` (itself if it is an IP), within `timeout`.
async fn resolve(
    target: &Target,
    resolver: &dyn Resolver,
    timeout: std::time::Duration,
) -> Result<Vec<SocketAddr>, Error> {
    let name = match &target.host {
        TargetHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, target.port)]),
        TargetHost::Name(name) => name,
    };
    match tokio::time::timeout(timeout, resolver.resolve(name, target.port)).await {
        Err(_) => Err(Error::DnsTimeout),
        Ok(Err(err)) => Err(Error::DnsError {
            rcode: Some(err.to_string()),
            info_code: None,
        }),
        Ok(Ok(addresses)) if addresses.is_empty() => Err(Error::DestinationNotFound),
        Ok(Ok(addresses)) => Ok(addresses),
    }
}

/// Connects to the first of `addresses` that answers.
async fn connect(
    addresses: &[SocketAddr],
    timeout: std::time::Duration,
) -> Result<TcpStream, Error> {
    let mut last = Error::DestinationUnavailable;
    for address in addresses {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
                last = Error::ConnectionRefused
            }
            Ok(Err(err)) => last = Error::Connect(err),
            Err(_) => last = Error::ConnectionTimeout,
        }
    }
    Err(last)
}

/// A TLS session over `stream`, verified against the system's root certificates for the
/// target's name (or IP).
async fn tls(
    target: &Target,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    use rustls::pki_types::ServerName;
    let name = match &target.host {
        TargetHost::Ip(ip) => ServerName::IpAddress((*ip).into()),
        TargetHost::Name(name) => {
            ServerName::try_from(name.clone()).map_err(|_| Error::HttpRequestUriInvalid)?
        }
    };
    tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, stream)
        .await
        .map_err(Error::Tls)
}

/// The TLS client configuration: the system's roots, loaded once per process.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "no usable root certificates on this host (install ca-certificates)".into(),
                );
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    Arc::new(builder.with_root_certificates(roots).with_no_client_auth())
                })
                .map_err(|err| err.to_string())
        })
        .clone()
        .map_err(|why| Error::InternalError(Some(why)))
}

/// An HTTP/1.1 connection over `stream`, driven by its own task until the returned handle
/// is dropped (with the response body, or with the request if it never got one).
async fn handshake<S>(stream: S) -> Result<Connection, Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::from)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, AbortOnDropHandle::new(driver)))
}

/// A response body that fails with `HTTP-response-body-size` past the activity's cap and
/// with `HTTP-response-timeout` past the request's deadline; logs the request when it ends.
struct CappedBody {
    incoming: hyper::body::Incoming,
    limit: u64,
    received: u64,
    deadline: Pin<Box<Sleep>>,
    finished: bool,
    log: RequestLog,
    _driver: AbortOnDropHandle<()>,
    _permit: OwnedSemaphorePermit,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    this.log.bytes = this.received;
                    if this.received > this.limit {
                        this.finished = true;
                        let error = Error::HttpResponseBodySize(Some(this.limit));
                        this.log.failed(&error);
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finished = true;
                let error = Error::from(err);
                this.log.failed(&error);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                this.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.finished = true;
                    this.log.failed(&Error::HttpResponseTimeout);
                    return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.incoming.is_end_stream()
    }
}
