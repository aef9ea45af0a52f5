//! A service on 127.0.0.1 that checks AWS Signature Version 4 the way AWS does, knowing the
//! one secret key it accepts: it rebuilds the canonical request from what it received,
//! derives the signing key and compares the signature (written here from the SigV4
//! specification, not with the signer under test). It answers every request with JSON:
//! `{"verified": bool, "why": ..., "access_key": ..., "path": ..., "host": ...}`, and keeps
//! each request so a test can verify it again, tampered.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// The access key id the service accepts.
pub const ACCESS_KEY: &str = "AKIDSIGV4TEST";
/// Its secret key.
pub const SECRET_KEY: &str = "sigv4-test-secret/K7MDENG+bPxRfiCY";

/// One request as the service received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The method.
    pub method: String,
    /// The path, as sent.
    pub path: String,
    /// The query string, as sent (without `?`).
    pub query: String,
    /// Every header (lowercase names), in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The running service; stops when dropped.
pub struct Sigv4Service {
    /// Its port on 127.0.0.1.
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Sigv4Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Sigv4Service {
    /// Starts the service on a free port.
    pub async fn start() -> Sigv4Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(request, log.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sigv4Service {
            port,
            received,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn answer(
    request: Request<Incoming>,
    log: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect(),
        body: body.to_vec(),
    };
    let verdict = verify(&received);
    let answer = json!({
        "verified": verdict.is_ok(),
        "why": verdict.as_ref().err(),
        "access_key": verdict.as_ref().ok(),
        "path": received.path,
        "host": received.header("host"),
        "security_token": received.header("x-amz-security-token"),
    });
    log.lock().unwrap().push(received);
    Ok(Response::new(Full::new(Bytes::from(answer.to_string()))))
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// HMAC-SHA256 (RFC 2104) of `data` under `key`.
fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(data.as_bytes())
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Checks `request`'s SigV4 signature against [`SECRET_KEY`]; the access key id it was
/// signed with, or why it does not verify.
pub fn verify(request: &Received) -> Result<String, String> {
    let authorization = request
        .header("authorization")
        .ok_or("no Authorization header")?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let field = |name: &str| {
        fields
            .split(", ")
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .ok_or(format!("no {name} in Authorization"))
    };
    let (credential, signed_headers, signature) = (
        field("Credential")?,
        field("SignedHeaders")?,
        field("Signature")?,
    );
    let mut scope = credential.splitn(2, '/');
    let access_key = scope.next().unwrap_or_default().to_string();
    let scope = scope.next().ok_or("no scope in the credential")?;
    let [date, region, service, terminator] = scope.split('/').collect::<Vec<_>>()[..] else {
        return Err(format!("malformed scope {scope}"));
    };
    if terminator != "aws4_request" {
        return Err("the scope does not end in aws4_request".into());
    }
    if access_key != ACCESS_KEY {
        return Err(format!("unknown access key {access_key}"));
    }
    let amz_date = request.header("x-amz-date").ok_or("no X-Amz-Date")?;
    if !amz_date.starts_with(date) {
        return Err("X-Amz-Date is not the scope's date".into());
    }
    let payload_hash = sha256_hex(&request.body);
    if let Some(claimed) = request.header("x-amz-content-sha256") {
        if claimed != payload_hash {
            return Err("X-Amz-Content-SHA256 is not the body's hash".into());
        }
    }
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<&str> = request
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} is missing"));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let mut query: Vec<&str> = request.query.split('&').filter(|p| !p.is_empty()).collect();
    query.sort_unstable();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        request.method,
        request.path,
        query.join("&"),
        canonical_headers,
        signed_headers,
        payload_hash
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let key = [date, region, service, "aws4_request"]
        .iter()
        .fold(format!("AWS4{SECRET_KEY}").into_bytes(), |key, part| {
            hmac(&key, part)
        });
    let expected = hex::encode(hmac(&key, &string_to_sign));
    if expected != signature {
        return Err("the signature does not match".into());
    }
    if !signed_headers.split(';').any(|name| name == "host") {
        return Err("host is not signed".into());
    }
    Ok(access_key)
}
