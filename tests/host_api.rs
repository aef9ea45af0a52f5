//! The host API's settings (`[activity.host]`), through the worker binary: a task's guest
//! log is capped at `max_log_lines` lines of `max_log_line_bytes` bytes, the drop logged once.

mod common;

use common::*;
use serde_json::json;
use sfn_fake::FakeSfn;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guests_log_is_capped_as_its_activitys_host_table_says() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("log-caps");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    write_config(
        &config,
        json!({
            "worker": {"region": "us-east-1", "endpoint_url": fake.endpoint},
            "activity": [{
                "arn": arn,
                "component": path_value(&guest_path("adversary")),
                "host": {"max_log_lines": 2, "max_log_line_bytes": 12},
            }],
        }),
    );
    let worker = LoggedWorker::start(&config, "trace,aws=warn,hyper=warn,h2=warn");
    // The guest logs five lines, one at each level, each longer than 12 bytes.
    let token = fake.enqueue(&arn, &json!({"behaviour": "log"}).to_string());
    fake.wait_for_result(&token, Duration::from_secs(60)).await;
    let log = worker.stop();
    let guest_lines: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("guest:") || line.contains(" guest "))
        .filter(|line| line.contains("adversary"))
        .collect();
    assert_eq!(guest_lines.len(), 2, "{log}");
    for line in &guest_lines {
        assert!(
            line.contains("adversary lo…"),
            "not cut at 12 bytes: {line}"
        );
    }
    assert!(
        log.contains("more than 2 log lines ([activity.host] max_log_lines)"),
        "{log}"
    );
}
