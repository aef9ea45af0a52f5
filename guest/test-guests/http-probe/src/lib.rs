//! Test guest: sends the HTTP request its input describes, `times` times (default 1), and
//! returns what each got, so the host's tests can check every outbound rule from inside.
//!
//! Input: `{"url": U, "method": M, "headers": {NAME: VALUE}, "body": TEXT, "times": N}`, or
//! `"body_bytes": N` for a body of N bytes of `x`.
//! Output (one request): `{"status", "headers", "body"}`, or `{"error": "ErrorCode::..."}`
//! naming the wasi:http error code (or the error text when there is no code); a list of
//! those for `times` > 1.

use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};
use wstd::http::{Body, Client, ErrorCode, Request};

fn handle(input: Value, _ctx: &Context) -> Result<Value, TaskError> {
    let times = input["times"].as_u64().unwrap_or(1);
    let results: Vec<Value> = (0..times)
        .map(|_| wstd::runtime::block_on(call(&input)))
        .collect();
    Ok(match <[Value; 1]>::try_from(results) {
        Ok([one]) => one,
        Err(many) => json!(many),
    })
}

async fn call(input: &Value) -> Value {
    send(input).await.unwrap_or_else(|error| {
        let error = match error.downcast_ref::<ErrorCode>() {
            Some(code) => format!("{code:?}"),
            None => format!("{error:#}"),
        };
        json!({ "error": error })
    })
}

async fn send(input: &Value) -> wstd::http::Result<Value> {
    let mut request = Request::builder()
        .method(input["method"].as_str().unwrap_or("GET"))
        .uri(input["url"].as_str().unwrap_or_default());
    if let Some(headers) = input["headers"].as_object() {
        for (name, value) in headers {
            request = request.header(name, value.as_str().unwrap_or_default());
        }
    }
    let body = match (input["body"].as_str(), input["body_bytes"].as_u64()) {
        (Some(text), _) => Body::from(text),
        (None, Some(bytes)) => Body::from(vec![b'x'; bytes as usize]),
        (None, None) => Body::empty(),
    };
    let mut response = Client::new().send(request.body(body)?).await?;
    let headers: serde_json::Map<String, Value> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.to_string(), Value::String(value))
        })
        .collect();
    let status = response.status().as_u16();
    let body = response.body_mut().str_contents().await?.to_string();
    Ok(json!({ "status": status, "headers": headers, "body": body }))
}

export_handler!(handle);
