//! `[activity.config]` end to end against LocalStack's Secrets Manager and SSM Parameter
//! Store beside its Step Functions: three activities (Python, JavaScript and Rust guests)
//! read plain values, secrets (plain, one key of a JSON secret, by ARN) and parameters
//! (String and SecureString) through wasi:config; each sees only its own keys; a rotated
//! secret is seen after the refresh interval, another after a SIGHUP reload; a secret that
//! fails to refresh keeps its last value (logged, counted); a secret missing at start is
//! refused naming it; and no secret value ever appears in the worker's debug log, its
//! metrics or `check`'s output.

mod common;

use common::localstack::{
    create_activity, create_state_machine, succeeded_output, unique, LocalStack,
};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PORT: &str = "4596";
const ENDPOINT: &str = "http://127.0.0.1:4596";
const METRICS: &str = "127.0.0.1:9596";

/// Calls a LocalStack JSON-protocol operation (`target`, e.g. `secretsmanager.CreateSecret`)
/// as the test's own client (LocalStack does not check signatures); panics on an error.
fn aws_json(service: &str, target: &str, payload: Value) -> Value {
    let authorization = format!(
        "Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=00"
    );
    let output = std::process::Command::new("curl")
        .args(["-sS", "-X", "POST", ENDPOINT, "-w", "\n%{http_code}"])
        .args(["-H", "Content-Type: application/x-amz-json-1.1"])
        .args(["-H", &format!("X-Amz-Target: {target}")])
        .args(["-H", &authorization, "--data-binary"])
        .arg(payload.to_string())
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    assert!(status.starts_with('2'), "{target}: {status} {body}");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A fresh `ClientRequestToken` (what an SDK generates for CreateSecret and PutSecretValue).
fn request_token() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let count = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("token-{nanos:024}-{count:08}")
}

/// What the config guests report of a secret: its length and byte sum modulo 65521.
fn fingerprint(value: &str) -> Value {
    let checksum = value.bytes().map(u64::from).sum::<u64>() % 65521;
    json!({"length": value.len(), "checksum": checksum})
}

fn state_machine(activity_arn: &str) -> Value {
    json!({
        "StartAt": "Quote",
        "States": {"Quote": {"Type": "Task", "Resource": activity_arn, "TimeoutSeconds": 60, "End": true}}
    })
}

/// Runs one execution of `machine`: its output.
async fn quote(client: &aws_sdk_sfn::Client, machine: &str, log: &dyn Fn() -> String) -> Value {
    let input = json!({"amount": 10, "probe": ["api_key", "rate", "region", "tenant_b_only"]});
    succeeded_output(client, machine, &input, log).await
}

/// Runs `machine` until its guest reports `expected` as its `api_key` (up to `within`).
async fn wait_for_key(
    client: &aws_sdk_sfn::Client,
    machine: &str,
    expected: &Value,
    within: Duration,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        let output = quote(client, machine, log).await;
        if output["api_key"] == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {output} after {within:?}, expected the key {expected}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// GET `path` of the worker's metrics endpoint.
fn scrape() -> String {
    let output = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{METRICS}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_read_their_own_secrets_and_parameters_refreshed_and_never_logged() {
    let guests = ["python-config", "js-config", "rust-config"].map(guest_path);
    let _localstack = LocalStack::start(PORT);
    let sdk = sfn_fake::local_sdk_config(ENDPOINT).await;
    let client = aws_sdk_sfn::Client::new(&sdk);
    let dir = tempfile::tempdir().unwrap();

    // The secrets and parameters, as an operator creates them.
    let prefix = unique("tenants");
    let secret = |tenant: &str| format!("sk-{tenant}-{}", unique("live"));
    let (a_key, b_key, c_key) = (secret("a"), secret("b"), secret("c"));
    let (a_name, b_name, c_name) = (
        format!("{prefix}/a/api-key"),
        format!("{prefix}/b/api"),
        format!("{prefix}/c/api-key"),
    );
    let create = |name: &str, value: &str| {
        aws_json(
            "secretsmanager",
            "secretsmanager.CreateSecret",
            json!({"Name": name, "SecretString": value, "ClientRequestToken": request_token()}),
        )
    };
    create(&a_name, &a_key);
    create(
        &b_name,
        &json!({"key": b_key, "note": "tenant b"}).to_string(),
    );
    let c_arn = create(&c_name, &c_key)["ARN"].as_str().unwrap().to_string();
    let parameter = |name: &str, value: &str, kind: &str| {
        aws_json(
            "ssm",
            "AmazonSSM.PutParameter",
            json!({"Name": name, "Value": value, "Type": kind, "Overwrite": true}),
        );
    };
    parameter(&format!("/{prefix}/a/rate"), "1.25", "String");
    parameter(&format!("/{prefix}/b/rate"), "0.5", "SecureString");

    // A secret missing at start: refused before any poll, naming the reference.
    let missing_activity = create_activity(&client, "config-missing").await;
    let missing_config = dir.path().join("missing.toml");
    let missing_ref = format!("secretsmanager:{prefix}/nobody");
    write_config(
        &missing_config,
        json!({
            "worker": {"region": "us-east-1", "endpoint_url": ENDPOINT},
            "activity": [{
                "arn": missing_activity,
                "component": path_value(&guests[0]),
                "config": {"secrets": {"api_key": missing_ref}},
            }],
        }),
    );
    let refused = worker_command()
        .args(["run", "--config"])
        .arg(&missing_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&missing_ref)
            && stderr.contains("ResourceNotFoundException")
            && stderr.contains("secretsmanager:GetSecretValue"),
        "{stderr}"
    );

    // Three tenants, one guest language each.
    let mut arns = Vec::new();
    let mut machines = Vec::new();
    for name in ["config-a", "config-b", "config-c"] {
        let arn = create_activity(&client, name).await;
        machines.push(create_state_machine(&client, name, &state_machine(&arn)).await);
        arns.push(arn);
    }
    let activity = |index: usize, config: Value| {
        json!({
            "arn": arns[index],
            "component": path_value(&guests[index]),
            "max_concurrency": 2,
            "pollers": 1,
            "timeout": "20s",
            "config": config,
        })
    };
    let config_path = dir.path().join("worker.toml");
    write_config(
        &config_path,
        json!({
            "worker": {
                "name": unique("config"),
                "region": "us-east-1",
                "endpoint_url": ENDPOINT,
                "drain_timeout": "10s",
                "metrics_addr": METRICS,
            },
            "activity": [
                activity(0, json!({
                    "values": {"region": "EU"},
                    "secrets": {
                        "api_key": format!("secretsmanager:{a_name}"),
                        "rate": format!("ssm:/{prefix}/a/rate"),
                    },
                    "refresh": "2s",
                })),
                activity(1, json!({
                    "secrets": {
                        "api_key": format!("secretsmanager:{b_name}#key"),
                        "rate": format!("ssm:/{prefix}/b/rate"),
                        "tenant_b_only": format!("secretsmanager:{b_name}#note"),
                    },
                })),
                activity(2, json!({
                    "values": {"region": "US", "rate": "2"},
                    "secrets": {"api_key": format!("secretsmanager:{c_arn}")},
                })),
            ],
        }),
    );
    let worker = LoggedWorker::start(&config_path, "debug");
    let pid = worker.child.id();
    let log_so_far = || "(the log is read when the worker stops)".to_string();

    let a = quote(&client, &machines[0], &log_so_far).await;
    assert_eq!(a["region"], "EU", "{a}");
    assert_eq!(
        (&a["rate"], &a["total"]),
        (&json!("1.25"), &json!(12.5)),
        "{a}"
    );
    assert_eq!(a["api_key"], fingerprint(&a_key), "{a}");
    assert_eq!(a["present"]["tenant_b_only"], false, "{a}");
    let b = quote(&client, &machines[1], &log_so_far).await;
    assert_eq!(
        (&b["region"], &b["present"]["region"]),
        (&Value::Null, &json!(false)),
        "{b}"
    );
    assert_eq!(
        (&b["rate"], b["total"].as_f64()),
        (&json!("0.5"), Some(5.0)),
        "{b}"
    );
    assert_eq!(b["api_key"], fingerprint(&b_key), "{b}");
    assert_eq!(b["present"]["tenant_b_only"], true, "{b}");
    let c = quote(&client, &machines[2], &log_so_far).await;
    assert_eq!(
        (&c["region"], c["total"].as_f64()),
        (&json!("US"), Some(20.0)),
        "{c}"
    );
    assert_eq!(c["api_key"], fingerprint(&c_key), "{c}");

    // Rotated: tenant A's guests see the new key after its 2 s refresh.
    let a_rotated = secret("a");
    aws_json(
        "secretsmanager",
        "secretsmanager.PutSecretValue",
        json!({"SecretId": a_name, "SecretString": a_rotated, "ClientRequestToken": request_token()}),
    );
    let rotated = fingerprint(&a_rotated);
    wait_for_key(
        &client,
        &machines[0],
        &rotated,
        Duration::from_secs(15),
        &log_so_far,
    )
    .await;

    // Tenant B refreshes every 5 minutes by default: a reload (SIGHUP) fetches again now.
    let b_rotated = secret("b");
    aws_json(
        "secretsmanager",
        "secretsmanager.PutSecretValue",
        json!({
            "SecretId": b_name,
            "SecretString": json!({"key": b_rotated, "note": "b"}).to_string(),
            "ClientRequestToken": request_token(),
        }),
    );
    send_signal("HUP", pid);
    wait_for_key(
        &client,
        &machines[1],
        &fingerprint(&b_rotated),
        Duration::from_secs(15),
        &log_so_far,
    )
    .await;

    // A secret that can no longer be fetched keeps its last value.
    aws_json(
        "secretsmanager",
        "secretsmanager.DeleteSecret",
        json!({"SecretId": a_name, "ForceDeleteWithoutRecovery": true}),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kept = quote(&client, &machines[0], &log_so_far).await;
    assert_eq!(kept["api_key"], rotated, "{kept}");
    // A reload that changes the activity but not its [activity.config] keeps the fetched
    // values: it applies (the secret is still gone) and tasks still see the last key.
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(text.contains("max_concurrency = 2"), "{text}");
    std::fs::write(
        &config_path,
        text.replacen("max_concurrency = 2", "max_concurrency = 3", 1),
    )
    .unwrap();
    send_signal("HUP", pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = quote(&client, &machines[0], &log_so_far).await;
    assert_eq!(kept["api_key"], rotated, "{kept}");
    let metrics = scrape();
    assert!(
        metrics.contains("sfn_worker_config_secret_fetches_total{")
            && metrics
                .lines()
                .any(|line| line.contains("result=\"failed\"")
                    && line.contains(&arns[0])
                    && !line.ends_with(" 0")),
        "{metrics}"
    );

    let checks: Vec<String> = guests
        .iter()
        .map(|guest| {
            let output = worker_command().arg("check").arg(guest).output().unwrap();
            assert!(output.status.success());
            String::from_utf8_lossy(&output.stdout).into_owned()
        })
        .collect();
    assert!(checks[0].contains("wasi:config/store"), "{}", checks[0]);
    let log = worker.stop();
    assert!(
        log.contains("a secret could not be refreshed") && log.contains(&a_name),
        "{log}"
    );
    assert!(
        log.contains("DEBUG"),
        "the worker did not log at debug:\n{log}"
    );
    assert!(!log.contains("reload refused"), "{log}");
    assert!(
        log.contains("activity updated"),
        "the second reload did not apply:\n{log}"
    );
    for value in [&a_key, &a_rotated, &b_key, &b_rotated, &c_key] {
        for (what, text) in [("the worker's log", &log), ("its metrics", &metrics)]
            .into_iter()
            .chain(checks.iter().map(|check| ("check's output", check)))
        {
            assert!(
                !text.contains(value.as_str()),
                "a secret value is in {what}:\n{text}"
            );
        }
    }
}
