//! Example guest in Rust: reads orders from S3, totals them, writes the total back to S3
//! and announces it on SQS, all without a credential: the worker signs each AWS call.
//!
//! The same contract as python-aws and js-aws: input `{"bucket", "key", "queue_url"}`, the
//! object a JSON list of `{"order_id", "total_cents"}`; output `{"orders", "total_cents",
//! "result_key", "message_id"}`. Grant `[activity.aws] services = ["s3", "sqs"]`.

use sfn_activity_aws::{call, s3_get, s3_put, AwsError};
use sfn_activity_guest::{export_handler, json, Context, TaskError, Value};

fn handle(input: Value, ctx: &Context) -> Result<Value, TaskError> {
    let field = |name: &str| {
        input[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| TaskError::new("Totals.InvalidInput", "give bucket, key and queue_url"))
    };
    let (bucket, key, queue_url) = (field("bucket")?, field("key")?, field("queue_url")?);
    wstd::runtime::block_on(async {
        let data = s3_get(&bucket, &key).await.map_err(|err| {
            TaskError::new("Totals.InputMissing", format!("s3://{bucket}/{key}: {err}"))
        })?;
        let orders: Vec<Value> = serde_json::from_slice(&data)
            .map_err(|err| TaskError::new("Totals.InvalidInput", err.to_string()))?;
        let total: i64 = orders.iter().filter_map(|o| o["total_cents"].as_i64()).sum();
        let summary = json!({"orders": orders.len(), "total_cents": total});
        let result_key = format!("totals/{key}");
        s3_put(&bucket, &result_key, summary.to_string().into_bytes(), "application/json")
            .await
            .map_err(failed)?;
        let message = json!({"s3_uri": format!("s3://{bucket}/{result_key}"), "orders": orders.len(), "total_cents": total});
        let sent = call(
            "sqs",
            "AmazonSQS.SendMessage",
            &json!({"QueueUrl": queue_url, "MessageBody": message.to_string()}),
        )
        .await
        .map_err(failed)?;
        let message_id = sent["MessageId"].as_str().unwrap_or_default().to_string();
        ctx.info(&format!("{} orders, {total} cents, announced as {message_id}", orders.len()));
        Ok(json!({
            "orders": orders.len(),
            "total_cents": total,
            "result_key": result_key,
            "message_id": message_id,
        }))
    })
}

fn failed(error: AwsError) -> TaskError {
    TaskError::new(format!("Totals.{}", error.code), error.message)
}

export_handler!(handle);
