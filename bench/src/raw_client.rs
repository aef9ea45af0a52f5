//! The fake's own ceiling: a minimal client (hyper, keep-alive, no SDK, no signing) doing
//! GetActivityTask + SendTaskSuccess pairs as fast as the fake answers.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

async fn call(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    endpoint: &str,
    operation: &str,
    body: Value,
) -> Result<Value> {
    let request = hyper::Request::post(endpoint)
        .header("content-type", "application/x-amz-json-1.0")
        .header("x-amz-target", format!("AWSStepFunctions.{operation}"))
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = client.request(request).await.context("calling the fake")?;
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

/// Runs `concurrency` loops of poll + success until `tasks` pairs are done.
pub async fn run(endpoint: &str, arn: &str, concurrency: usize, tasks: usize) -> Result<()> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let done = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..concurrency {
        let (client, done) = (client.clone(), done.clone());
        let (endpoint, arn) = (endpoint.to_string(), arn.to_string());
        loops.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < tasks {
                let task = call(
                    &client,
                    &endpoint,
                    "GetActivityTask",
                    json!({"activityArn": arn, "workerName": "raw"}),
                )
                .await?;
                let Some(token) = task["taskToken"].as_str() else {
                    continue;
                };
                let output = task["input"].as_str().unwrap_or("{}");
                call(
                    &client,
                    &endpoint,
                    "SendTaskSuccess",
                    json!({"taskToken": token, "output": output}),
                )
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for one in loops {
        one.await??;
    }
    Ok(())
}
