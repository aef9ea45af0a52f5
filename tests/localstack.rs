//! End to end against LocalStack's Step Functions (a real ASL interpreter): activities and
//! state machines (with Retry on Worker.ShuttingDown and a Catch), executions, the worker
//! binary serving the example guests from a TOML config, DescribeExecution asserted, and a
//! SIGTERM that drains (an execution started after it still runs on the open poll), and a
//! guest calling a local HTTP service its activity allows, and kit guests whose uncaught
//! exceptions a `Catch` matches by class name.
//!
//! LocalStack is started (and stopped) by this test through tests/localstack.sh, on port
//! 4599 so a LocalStack of your own on 4566 is not disturbed; names are unique per run.

mod common;

use aws_sdk_sfn::types::ExecutionStatus;
use common::localstack::{
    create_activity, create_state_machine, succeeded_output, unique, wait_for_execution,
    LocalStack, WorkerProcess,
};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const PORT: &str = "4599";

fn state_machine(activity_arn: &str) -> Value {
    json!({
        "Comment": "sfn-wasm-worker end-to-end test",
        "StartAt": "Handle",
        "States": {
            "Handle": {
                "Type": "Task",
                "Resource": activity_arn,
                "TimeoutSeconds": 60,
                "Retry": [{"ErrorEquals": ["Worker.ShuttingDown"], "IntervalSeconds": 1, "MaxAttempts": 3}],
                "Catch": [{
                    "ErrorEquals": ["Wasm.Trap", "Wasm.Timeout", "Wasm.OutOfMemory", "ValueError", "TypeError"],
                    "ResultPath": "$.guest_error",
                    "Next": "Quarantined"
                }],
                "End": true
            },
            "Quarantined": {"Type": "Pass", "End": true}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_succeed_and_fail_through_the_worker_on_localstack() {
    // Build what the worker needs before starting anything.
    let names = [
        "rust-order",
        "python-order",
        "adversary",
        "python-fetch",
        "python-kit",
        "js-kit",
        "http-probe",
        "python-aws",
        "js-aws",
        "rust-aws",
    ];
    let guests = names.map(guest_path);
    let service = common::http_service::HttpService::start().await;
    let _localstack = LocalStack::start(PORT);
    let endpoint = format!("http://127.0.0.1:{PORT}");
    let sdk = sfn_fake::local_sdk_config(&endpoint).await;
    let client = aws_sdk_sfn::Client::new(&sdk);

    let worker_name = unique("e2e");
    let mut activities = Vec::new();
    let mut machines = Vec::new();
    for (guest, path) in names.iter().zip(&guests) {
        let name = format!("e2e-{guest}");
        let activity = create_activity(&client, &name).await;
        let machine = create_state_machine(&client, &name, &state_machine(&activity)).await;
        activities.push((activity, path.clone()));
        machines.push(machine);
    }

    let dir = tempfile::tempdir().unwrap();
    let bucket_name = unique("e2e-bucket");
    let activity_tables: Vec<_> = activities
        .iter()
        .map(|(arn, path)| {
            let mut table = json!({
                "arn": arn,
                "component": path_value(path),
                "max_concurrency": 4,
                "pollers": 1,
                "timeout": "20s",
                "memory_limit": "256MiB",
            });
            // Only the fetch guest may call the local service.
            if *path == guests[3] {
                table["outbound"] = json!({"allowed_hosts": [service.origin()]});
            }
            // The probe calls S3 and SQS, signed by the worker (region and endpoint: the
            // worker's, i.e. LocalStack).
            if guests[6..=9].contains(path) {
                table["aws"] = json!({"services": ["s3", "sqs"]});
            }
            // The adversary's outputs over 256 KiB go to the bucket the probe creates.
            if *path == guests[2] {
                table["aws"] = json!({"services": ["s3"]});
                table["large_output"] = json!({"bucket": bucket_name, "prefix": "outputs/"});
            }
            table
        })
        .collect();
    let config_path = dir.path().join("worker.toml");
    write_config(
        &config_path,
        json!({
            "worker": {
                "name": worker_name,
                "region": "us-east-1",
                "endpoint_url": endpoint,
                "drain_timeout": "20s",
            },
            "activity": activity_tables,
        }),
    );
    let log_path = dir.path().join("worker.log");
    let worker = worker_command()
        .args(["run", "--config", config_path.to_str().unwrap()])
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("starting the worker");
    let mut worker = WorkerProcess(worker);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let order = json!({"order_id": "E2E-1", "items": [{"sku": "pen", "quantity": 3, "unit_price_cents": 250}], "discount_percent": 20});
    let expected = json!({"order_id": "E2E-1", "lines": 1, "item_count": 3, "subtotal_cents": 750, "discount_cents": 150, "total_cents": 600, "status": "accepted"});
    let bad_order = json!({"order_id": "E2E-2", "items": []});
    let cases = [
        (0, order.clone()),
        (0, bad_order.clone()),
        (1, order.clone()),
        (1, bad_order.clone()),
        (2, json!({"behaviour": "panic"})),
        (3, json!({"url": format!("{}/echo", service.origin())})),
        (4, json!({"do": "raise"})),
        (5, json!({"do": "raise"})),
    ];
    let mut executions = Vec::new();
    for (machine, input) in &cases {
        let started = client
            .start_execution()
            .state_machine_arn(&machines[*machine])
            .input(input.to_string())
            .send()
            .await
            .unwrap();
        executions.push(started.execution_arn);
    }
    let mut results = Vec::new();
    for arn in &executions {
        results.push(wait_for_execution(&client, arn).await);
    }
    let context = || format!("worker log:\n{}", log());
    for (index, language) in [(0, "rust"), (2, "python")] {
        let ok = &results[index];
        assert_eq!(
            ok.status,
            ExecutionStatus::Succeeded,
            "{language} order: {ok:?}\n{}",
            context()
        );
        let output: Value = serde_json::from_str(ok.output.as_deref().unwrap()).unwrap();
        assert_eq!(output, expected, "{language} output");
        let failed = &results[index + 1];
        assert_eq!(
            failed.status,
            ExecutionStatus::Failed,
            "{language} bad order: {failed:?}\n{}",
            context()
        );
        assert_eq!(failed.error.as_deref(), Some("Order.Invalid"));
        assert!(
            failed
                .cause
                .as_deref()
                .unwrap_or_default()
                .contains("items"),
            "{failed:?}"
        );
    }
    let caught = &results[4];
    assert_eq!(
        caught.status,
        ExecutionStatus::Succeeded,
        "trap should be caught: {caught:?}\n{}",
        context()
    );
    let output: Value = serde_json::from_str(caught.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["guest_error"]["Error"], "Wasm.Trap", "{output}");
    let fetched = &results[5];
    assert_eq!(
        fetched.status,
        ExecutionStatus::Succeeded,
        "the fetch guest: {fetched:?}\n{}",
        context()
    );
    let output: Value = serde_json::from_str(fetched.output.as_deref().unwrap()).unwrap();
    assert_eq!(output["status"], 200, "{output}");
    assert_eq!(output["body"]["method"], "GET", "{output}");
    assert_eq!(service.requests(), 1);
    // An uncaught exception in a kit guest is caught by the state machine by its class name.
    for (index, error) in [(6, "ValueError"), (7, "TypeError")] {
        let caught = &results[index];
        assert_eq!(
            caught.status,
            ExecutionStatus::Succeeded,
            "{error} should be caught: {caught:?}\n{}",
            context()
        );
        let output: Value = serde_json::from_str(caught.output.as_deref().unwrap()).unwrap();
        assert_eq!(output["guest_error"]["Error"], error, "{output}");
        let cause = output["guest_error"]["Cause"].as_str().unwrap_or_default();
        assert!(cause.starts_with("bad sku"), "{output}");
    }
    let bucket = format!("https://{bucket_name}.s3.us-east-1.amazonaws.com");
    aws_calls_through_the_probe(&client, &machines[6], &bucket, &context).await;
    // A large output arrives as a pointer to an object with its bytes.
    let pointer = probe(
        &client,
        &machines[2],
        json!({"behaviour": "huge-output", "bytes": 300_000}),
    )
    .await;
    let uri = pointer["s3_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{pointer}\n{}", context()));
    let key = uri.strip_prefix(&format!("s3://{bucket_name}/")).unwrap();
    // The object is larger than an execution's output: its length, and its first bytes.
    let url = format!("{bucket}/{key}");
    let head = probe(&client, &machines[6], json!({"method": "HEAD", "url": url})).await;
    assert_eq!(
        head["headers"]["content-length"],
        pointer["bytes"].to_string(),
        "{head}"
    );
    let start = probe(
        &client,
        &machines[6],
        json!({"url": url, "headers": {"range": "bytes=0-9"}}),
    )
    .await;
    assert_eq!(start["body"], r#"{"data":"x"#, "{start}");
    let mut aws_inputs = Vec::new();
    for (machine, name) in [
        (&machines[7], "python"),
        (&machines[8], "js"),
        (&machines[9], "rust"),
    ] {
        let input = guest_reads_s3_and_sends_to_sqs(
            &client,
            &machines[6],
            machine,
            &bucket_name,
            name,
            &context,
        )
        .await;
        aws_inputs.push(input);
    }
    // Each activity's open poll gets one late execution below, so that every poll returns.

    // SIGTERM: no new polls, but each open poll still runs what it brings, then exit 0.
    tokio::time::sleep(Duration::from_secs(1)).await;
    send_signal("TERM", worker.0.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late_inputs = [
        order.clone(),
        order.clone(),
        json!({"behaviour": "echo", "late": true}),
        json!({"url": format!("{}/echo", service.origin())}),
        json!({"do": "echo"}),
        json!({"do": "echo"}),
        json!({"url": format!("{bucket}/report.json")}),
    ]
    .into_iter()
    .chain(aws_inputs)
    .collect::<Vec<_>>();
    let mut late = Vec::new();
    for (machine, input) in machines.iter().zip(&late_inputs) {
        let started = client
            .start_execution()
            .state_machine_arn(machine)
            .input(input.to_string())
            .send()
            .await
            .unwrap();
        late.push(started.execution_arn);
    }
    for arn in &late {
        let execution = wait_for_execution(&client, arn).await;
        assert_eq!(
            execution.status,
            ExecutionStatus::Succeeded,
            "late execution: {execution:?}\n{}",
            context()
        );
    }
    let status = wait_for_exit(&mut worker.0, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("worker did not exit after SIGTERM\n{}", context()));
    assert!(
        status.success(),
        "worker exited with {status}\n{}",
        context()
    );
    let log = log();
    assert!(log.contains("worker stopped"), "{log}");
}

/// Runs the http-probe guest once through `machine` with `input`: what its request got.
async fn probe(client: &aws_sdk_sfn::Client, machine: &str, input: Value) -> Value {
    succeeded_output(client, machine, &input, &String::new).await
}

/// A guest with `[activity.aws] services = ["s3", "sqs"]` and no credential of its own
/// creates a bucket, writes and reads an object, creates a queue, sends to it and receives
/// from it: every request signed by the worker, answered by LocalStack's S3 and SQS.
async fn aws_calls_through_the_probe(
    client: &aws_sdk_sfn::Client,
    machine: &str,
    bucket: &str,
    context: &dyn Fn() -> String,
) {
    let ok = |answer: &Value, what: &str| {
        assert_eq!(answer["status"], 200, "{what}: {answer}\n{}", context());
    };
    let created = probe(
        client,
        machine,
        json!({"method": "PUT", "url": format!("{bucket}/")}),
    )
    .await;
    ok(&created, "CreateBucket");
    let report = r#"{"total": 42}"#;
    let put = probe(
        client,
        machine,
        json!({"method": "PUT", "url": format!("{bucket}/report.json"), "body": report}),
    )
    .await;
    ok(&put, "PutObject");
    let got = probe(
        client,
        machine,
        json!({"url": format!("{bucket}/report.json")}),
    )
    .await;
    ok(&got, "GetObject");
    assert_eq!(got["body"], report);

    let queue = probe(
        client,
        machine,
        sqs_call("CreateQueue", json!({"QueueName": unique("e2e-queue")})),
    )
    .await;
    ok(&queue, "CreateQueue");
    let queue_url = serde_json::from_str::<Value>(queue["body"].as_str().unwrap()).unwrap()
        ["QueueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = probe(
        client,
        machine,
        sqs_call(
            "SendMessage",
            json!({"QueueUrl": queue_url, "MessageBody": "order E2E-1 done"}),
        ),
    )
    .await;
    ok(&sent, "SendMessage");
    let received = receive(client, machine, &queue_url).await;
    ok(&received, "ReceiveMessage");
    assert!(
        received["body"]
            .as_str()
            .unwrap()
            .contains("order E2E-1 done"),
        "{received}"
    );
}

/// The probe's input for the SQS JSON-protocol call `target` with `body`.
fn sqs_call(target: &str, body: Value) -> Value {
    json!({
        "method": "POST",
        "url": "https://sqs.us-east-1.amazonaws.com/",
        "headers": {
            "content-type": "application/x-amz-json-1.0",
            "x-amz-target": format!("AmazonSQS.{target}"),
        },
        "body": body.to_string(),
    })
}

/// An AWS example (guest/examples/python-aws, js-aws or rust-aws, through its kit's or
/// the Rust `sfn-activity-aws` crate's helpers)
/// reads orders from S3 (`orders/NAME.json`), writes their total back and announces it on
/// SQS; returns the input, for its late execution.
async fn guest_reads_s3_and_sends_to_sqs(
    client: &aws_sdk_sfn::Client,
    probe_machine: &str,
    guest_machine: &str,
    bucket_name: &str,
    name: &str,
    context: &dyn Fn() -> String,
) -> Value {
    let bucket = format!("https://{bucket_name}.s3.us-east-1.amazonaws.com");
    let orders =
        json!([{"order_id": "A", "total_cents": 600}, {"order_id": "B", "total_cents": 150}]);
    let put = probe(
        client,
        probe_machine,
        json!({"method": "PUT", "url": format!("{bucket}/orders/{name}.json"), "body": orders.to_string()}),
    )
    .await;
    assert_eq!(put["status"], 200, "{put}");
    let queue = probe(
        client,
        probe_machine,
        sqs_call("CreateQueue", json!({"QueueName": unique("e2e-totals")})),
    )
    .await;
    let body: Value = serde_json::from_str(queue["body"].as_str().unwrap()).unwrap();
    let queue_url = body["QueueUrl"].as_str().unwrap().to_string();
    let key = format!("orders/{name}.json");
    let input = json!({"bucket": bucket_name, "key": key, "queue_url": queue_url});
    let totals = probe(client, guest_machine, input.clone()).await;
    assert_eq!(totals["total_cents"], 750, "{totals}\n{}", context());
    assert_eq!(totals["orders"], 2, "{totals}");
    let written = probe(
        client,
        probe_machine,
        json!({"url": format!("{bucket}/totals/{key}")}),
    )
    .await;
    let written: Value = serde_json::from_str(written["body"].as_str().unwrap()).unwrap();
    assert_eq!(written, json!({"orders": 2, "total_cents": 750}));
    let received = receive(client, probe_machine, &queue_url).await;
    let message = received["body"].as_str().unwrap();
    assert!(
        message.contains("750") && message.contains(&format!("totals/{key}")),
        "{received}"
    );
    input
}

/// What the probe (through `machine`) receives from the queue `queue_url`.
async fn receive(client: &aws_sdk_sfn::Client, machine: &str, queue_url: &str) -> Value {
    let input = sqs_call(
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 1}),
    );
    probe(client, machine, input).await
}
