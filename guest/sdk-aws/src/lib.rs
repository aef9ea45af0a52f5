//! HTTP and AWS calls for Rust guests of sfn-wasm-worker, beside the guest SDK
//! (`sfn-activity-guest`), in the `handler-http` world. The same helpers as the Python and
//! JavaScript kits' `http` and `aws`:
//!
//! ```ignore
//! let orders = wstd::runtime::block_on(sfn_activity_aws::s3_get("my-bucket", "in/today.json"))?;
//! wstd::runtime::block_on(sfn_activity_aws::call(
//!     "sqs",
//!     "AmazonSQS.SendMessage",
//!     &json!({"QueueUrl": url, "MessageBody": "done"}),
//! ))?;
//! ```
//!
//! The activity grants the services (`[activity.aws] services`) and the worker signs each
//! call: the guest holds no credential. The region is `AWS_REGION`, which the worker sets.

use serde_json::Value;
use std::fmt;
use wstd::http::{Body, Client, Request};

/// A response: its status, headers (lowercase names) and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (undecodable bytes replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A request that got no response; the text names the wasi:http error (e.g.
/// `HttpRequestDenied`).
#[derive(Debug, Clone)]
pub struct HttpError(pub String);

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpError {}

/// An AWS service's error answer (or a request that got none: status 0).
#[derive(Debug, Clone)]
pub struct AwsError {
    /// The HTTP status (0: no response).
    pub status: u16,
    /// The error code (`NoSuchKey`, `AWS.SimpleQueueService.NonExistentQueue`...).
    pub code: String,
    /// The service's message.
    pub message: String,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for AwsError {}

impl From<HttpError> for AwsError {
    fn from(error: HttpError) -> AwsError {
        AwsError {
            status: 0,
            code: "NoResponse".into(),
            message: error.0,
        }
    }
}

/// Sends one request (`method` `url` with `headers` and `body`); its response.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Response, HttpError> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Body::from(body))
        .map_err(|err| HttpError(err.to_string()))?;
    let mut response = Client::new().send(request).await.map_err(describe)?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), value)
        })
        .collect();
    let body = response.body_mut().contents().await.map_err(describe)?.to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn describe(error: wstd::http::Error) -> HttpError {
    match error.downcast_ref::<wstd::http::ErrorCode>() {
        Some(code) => HttpError(format!("{code:?}")),
        None => HttpError(format!("{error:#}")),
    }
}

fn region() -> Result<String, AwsError> {
    std::env::var("AWS_REGION").map_err(|_| AwsError {
        status: 0,
        code: "NoRegion".into(),
        message: "the activity grants no AWS service ([activity.aws])".into(),
    })
}

/// The JSON protocol version of a JSON-protocol service (its API reference gives it).
fn json_version(service: &str) -> &'static str {
    match service {
        "sqs" | "dynamodb" | "states" => "1.0",
        _ => "1.1",
    }
}

/// Calls a JSON-protocol service (`target` is the `X-Amz-Target`, e.g.
/// `AmazonSQS.SendMessage`); the answer parsed.
pub async fn call(service: &str, target: &str, payload: &Value) -> Result<Value, AwsError> {
    let url = format!("https://{service}.{}.amazonaws.com/", region()?);
    let content_type = format!("application/x-amz-json-{}", json_version(service));
    let headers = [("content-type", content_type.as_str()), ("x-amz-target", target)];
    let response = request("POST", &url, &headers, payload.to_string().into_bytes()).await?;
    let answer = response.json().unwrap_or(Value::Null);
    if response.status >= 300 {
        let kind = answer["__type"].as_str().unwrap_or_default();
        let code = kind.rsplit('#').next().filter(|c| !c.is_empty());
        let message = answer["message"]
            .as_str()
            .or(answer["Message"].as_str())
            .map_or_else(|| response.text(), str::to_string);
        return Err(AwsError {
            status: response.status,
            code: code.map_or_else(|| format!("HTTP{}", response.status), str::to_string),
            message,
        });
    }
    Ok(answer)
}

fn s3_url(bucket: &str, key: &str) -> Result<String, AwsError> {
    let path: Vec<String> = key.split('/').map(percent_encode).collect();
    Ok(format!(
        "https://{bucket}.s3.{}.amazonaws.com/{}",
        region()?,
        path.join("/")
    ))
}

fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn s3_error(response: &Response) -> AwsError {
    let text = response.text();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find('<')? + start;
        Some(text[start..end].to_string())
    };
    AwsError {
        status: response.status,
        code: tag("Code").unwrap_or_else(|| format!("HTTP{}", response.status)),
        message: tag("Message").unwrap_or_else(|| text.chars().take(300).collect()),
    }
}

/// The bytes of object `key` in `bucket`.
pub async fn s3_get(bucket: &str, key: &str) -> Result<Vec<u8>, AwsError> {
    let response = request("GET", &s3_url(bucket, key)?, &[], Vec::new()).await?;
    if response.status >= 300 {
        return Err(s3_error(&response));
    }
    Ok(response.body)
}

/// Writes `body` as object `key` in `bucket`, of type `content_type`.
pub async fn s3_put(
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    content_type: &str,
) -> Result<(), AwsError> {
    let headers = [("content-type", content_type)];
    let response = request("PUT", &s3_url(bucket, key)?, &headers, body).await?;
    if response.status >= 300 {
        return Err(s3_error(&response));
    }
    Ok(())
}
