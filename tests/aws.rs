//! AWS calls signed by the host (`[activity.aws]`), against a local service that verifies
//! SigV4 exactly (tests/common/sigv4_service.rs) standing in for AWS through the endpoint
//! override: what is signed and how, what the guest's own signing headers become, and what
//! the activity refuses (a service not granted, another region, an oversized body).

mod common;

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use common::sigv4_service::{self, Sigv4Service};
use common::*;
use serde_json::{json, Value};
use sfn_wasm_worker::config::units::ByteSize;
use sfn_wasm_worker::sandbox::capability::{Capability, GrantContext};
use sfn_wasm_worker::sandbox::large_output::{LargeOutput, LargeOutputSettings};
use sfn_wasm_worker::sandbox::outbound::aws::{AwsGrant, AwsSettings};
use sfn_wasm_worker::sandbox::outbound::client::{ResolveFuture, Resolver};
use sfn_wasm_worker::sandbox::outbound::policy::Allowlist;
use sfn_wasm_worker::sandbox::outbound::{OutboundGrant, OutboundLimits};
use sfn_wasm_worker::sandbox::{Grants, Outcome, TaskEnd, TaskStats};
use sha2::Digest as _;
use std::sync::Arc;

/// Grants calling `services` in us-east-1, sent to `service` and signed with its known key.
fn grants(service: &Sigv4Service, services: &[&str], max_request_bytes: Option<u64>) -> Grants {
    let settings = AwsSettings {
        services: services.iter().map(|s| s.to_string()).collect(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(service.origin()),
        max_request_bytes: max_request_bytes.map(ByteSize),
        ..AwsSettings::default()
    };
    let credentials = Credentials::new(
        sigv4_service::ACCESS_KEY,
        sigv4_service::SECRET_KEY,
        None,
        None,
        "test",
    );
    let grant = AwsGrant::new(
        &settings,
        &GrantContext::default(),
        Some(SharedCredentialsProvider::new(credentials)),
    );
    Grants {
        aws: Some(Arc::new(grant)),
        ..Grants::default()
    }
}

/// Runs the http-probe guest with `input`: what it got back, and the task's figures.
async fn probe(input: Value, grants: &Grants) -> (Value, TaskStats) {
    let (task, _) = task(&input.to_string());
    match guest("http-probe").run(task, &limits(), grants).await {
        (TaskEnd::Report(outcome), stats) => (expect_success(&outcome), stats),
        (TaskEnd::Abandoned(why), _) => panic!("abandoned: {why}"),
    }
}

/// What the verifying service answered the guest.
fn verdict(result: &Value) -> Value {
    assert_eq!(result["status"], 200, "{result}");
    serde_json::from_str(result["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_json_protocol_call_is_signed_by_the_host_and_the_guests_own_signature_removed() {
    let service = Sigv4Service::start().await;
    let grants = grants(&service, &["sqs"], None);
    let (result, stats) = probe(
        json!({
            "method": "POST",
            "url": "https://sqs.us-east-1.amazonaws.com/",
            "headers": {
                "content-type": "application/x-amz-json-1.0",
                "x-amz-target": "AmazonSQS.SendMessage",
                "authorization": "AWS4-HMAC-SHA256 Credential=AKIDGUESTOWN/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=00",
                "x-amz-security-token": "a-token-the-guest-made-up",
                "x-amz-date": "20000101T000000Z",
            },
            "body": "{\"QueueUrl\":\"https://sqs.us-east-1.amazonaws.com/000000000000/q\",\"MessageBody\":\"hi\"}",
        }),
        &grants,
    )
    .await;
    let verdict = verdict(&result);
    assert_eq!(verdict["verified"], true, "{verdict}");
    assert_eq!(verdict["access_key"], sigv4_service::ACCESS_KEY);
    assert_eq!(
        verdict["security_token"],
        Value::Null,
        "the guest's token is gone"
    );
    assert_eq!(verdict["host"], format!("127.0.0.1:{}", service.port));
    let received = &service.received()[0];
    assert_eq!(
        received.header("x-amz-target"),
        Some("AmazonSQS.SendMessage")
    );
    assert!(!received.header("x-amz-date").unwrap().starts_with("2000"));
    let calls = stats.usage.outbound.aws_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!((&*calls[0].0, calls[0].1), ("sqs", "2xx"));
    // Nothing of the credential reached the guest.
    assert!(!result.to_string().contains(sigv4_service::SECRET_KEY));
}

#[tokio::test]
async fn a_virtual_hosted_s3_put_goes_path_style_with_its_payload_hash_signed() {
    let service = Sigv4Service::start().await;
    let grants = grants(&service, &["s3"], None);
    let (result, _) = probe(
        json!({
            "method": "PUT",
            "url": "https://reports.s3.us-east-1.amazonaws.com/2026/12/summary.json?x-id=PutObject",
            "headers": {"content-type": "application/json"},
            "body": "{\"total\": 42}",
        }),
        &grants,
    )
    .await;
    let verdict = verdict(&result);
    assert_eq!(verdict["verified"], true, "{verdict}");
    assert_eq!(verdict["path"], "/reports/2026/12/summary.json");
    let received = &service.received()[0];
    assert!(received.header("x-amz-content-sha256").is_some());
    assert_eq!(received.body, b"{\"total\": 42}");
}

#[tokio::test]
async fn the_verifier_refuses_a_tampered_request() {
    let service = Sigv4Service::start().await;
    let grants = grants(&service, &["secretsmanager"], None);
    probe(
        json!({
            "method": "POST",
            "url": "https://secretsmanager.us-east-1.amazonaws.com/",
            "headers": {"x-amz-target": "secretsmanager.GetSecretValue"},
            "body": "{\"SecretId\":\"tenant-a\"}",
        }),
        &grants,
    )
    .await;
    let signed = service.received()[0].clone();
    assert_eq!(
        sigv4_service::verify(&signed),
        Ok(sigv4_service::ACCESS_KEY.into())
    );
    let mut body = signed.clone();
    body.body = b"{\"SecretId\":\"tenant-b\"}".to_vec();
    let mut target = signed.clone();
    for (name, value) in &mut target.headers {
        if name == "x-amz-target" {
            *value = "secretsmanager.DeleteSecret".into();
        }
    }
    let mut path = signed;
    path.path = "/other".into();
    for tampered in [body, target, path] {
        assert!(sigv4_service::verify(&tampered).is_err(), "{tampered:?}");
    }
}

#[tokio::test]
async fn services_not_granted_other_regions_and_oversized_bodies_are_refused() {
    let service = Sigv4Service::start().await;
    let grants = grants(&service, &["sqs"], Some(64));
    for (url, body) in [
        ("https://dynamodb.us-east-1.amazonaws.com/", "{}"),
        ("https://sqs.eu-west-1.amazonaws.com/", "{}"),
        ("https://bucket.s3.us-east-1.amazonaws.com/key", "{}"),
    ] {
        let (result, stats) =
            probe(json!({"method": "POST", "url": url, "body": body}), &grants).await;
        assert_eq!(
            result["error"], "ErrorCode::HttpRequestDenied",
            "{url}: {result}"
        );
        assert_eq!(stats.usage.outbound.denied(), 1);
    }
    let (result, _) = probe(
        json!({"method": "POST", "url": "https://sqs.us-east-1.amazonaws.com/", "body": "x".repeat(65)}),
        &grants,
    )
    .await;
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("HttpRequestBodySize"),
        "{result}"
    );
    // A body past the host's 1 MiB buffer: the guest still writes it when the host refuses
    // it, and learns why (not a closed stream's "connection reset").
    let (result, _) = probe(
        json!({"method": "POST", "url": "https://sqs.us-east-1.amazonaws.com/", "body_bytes": 3 << 20}),
        &grants,
    )
    .await;
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("HttpRequestBodySize"),
        "{result}"
    );
    assert!(service.received().is_empty(), "nothing reached the service");
}

#[tokio::test]
async fn without_an_aws_grant_an_aws_name_is_an_ordinary_host_and_denied() {
    let service = Sigv4Service::start().await;
    let (result, _) = probe(
        json!({"method": "POST", "url": "https://sqs.us-east-1.amazonaws.com/", "body": "{}"}),
        &Grants::default(),
    )
    .await;
    assert_eq!(result["error"], "ErrorCode::HttpRequestDenied", "{result}");
    assert!(service.received().is_empty());
}

/// The grants of `grants` with large outputs going to `bucket`.
fn with_large_output(mut grants: Grants, bucket: &str) -> Grants {
    let settings = LargeOutputSettings {
        bucket: Some(bucket.into()),
        prefix: "outputs/".into(),
    };
    grants.large_output = <LargeOutput as Capability>::grant(&settings, &GrantContext::default());
    grants
}

/// Runs the adversary guest returning `bytes` bytes of output under `grants`.
async fn huge_output(bytes: usize, grants: &Grants) -> Outcome {
    let input = json!({"behaviour": "huge-output", "bytes": bytes});
    let (task, _) = task(&input.to_string());
    match guest("adversary").run(task, &limits(), grants).await {
        (TaskEnd::Report(outcome), _) => outcome,
        (TaskEnd::Abandoned(why), _) => panic!("abandoned: {why}"),
    }
}

#[tokio::test]
async fn a_large_output_is_written_to_s3_and_the_task_succeeds_with_a_pointer() {
    let service = Sigv4Service::start().await;
    let grants = with_large_output(grants(&service, &["s3"], None), "task-outputs");
    let pointer = expect_success(&huge_output(300_000, &grants).await);
    let received = &service.received()[0];
    assert_eq!(
        sigv4_service::verify(received),
        Ok(sigv4_service::ACCESS_KEY.into())
    );
    assert_eq!(received.method, "PUT");
    let key = received.path.strip_prefix("/task-outputs/").unwrap();
    assert!(
        key.starts_with("outputs/") && key.ends_with(".json"),
        "{key}"
    );
    assert_eq!(pointer["s3_uri"], format!("s3://task-outputs/{key}"));
    assert_eq!(pointer["bytes"], received.body.len());
    assert!(received.body.len() > 300_000);
    let sha256 = format!("{:x}", sha2::Sha256::digest(&received.body));
    assert_eq!(pointer["sha256"], sha256);
    // A small output is returned as it is.
    let small = expect_success(&huge_output(10, &grants).await);
    assert_eq!(small["data"], "x".repeat(10));
    assert_eq!(service.received().len(), 1);
}

#[tokio::test]
async fn an_upload_that_keeps_failing_is_output_upload_failed() {
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let settings = AwsSettings {
        services: vec!["s3".into()],
        region: Some("us-east-1".into()),
        endpoint_url: Some(format!("http://127.0.0.1:{unreachable}")),
        ..AwsSettings::default()
    };
    let credentials = Credentials::new("AKIDX", "secret", None, None, "test");
    let grant = AwsGrant::new(
        &settings,
        &GrantContext::default(),
        Some(SharedCredentialsProvider::new(credentials)),
    );
    let grants = with_large_output(
        Grants {
            aws: Some(Arc::new(grant)),
            ..Grants::default()
        },
        "task-outputs",
    );
    let cause = expect_failure(
        &huge_output(300_000, &grants).await,
        "Worker.OutputUploadFailed",
    );
    assert!(
        cause.contains("s3://task-outputs/outputs/") && cause.contains("300"),
        "{cause}"
    );
}

/// Answers every name with one address.
struct OneAddress(std::net::SocketAddr);

impl Resolver for OneAddress {
    fn resolve(&self, _host: &str, _port: u16) -> ResolveFuture {
        let address = self.0;
        Box::pin(async move { Ok(vec![address]) })
    }
}

#[tokio::test]
async fn an_aws_name_that_resolves_to_the_metadata_address_is_refused_unsigned() {
    // No endpoint override: the call goes to the name itself, which "resolves" to IMDS.
    let settings = AwsSettings {
        services: vec!["sqs".into()],
        region: Some("us-east-1".into()),
        endpoint_url: None,
        ..AwsSettings::default()
    };
    let context = GrantContext::default();
    if std::env::var_os("AWS_ENDPOINT_URL").is_some() {
        return; // the override would apply: this case needs AWS's own names
    }
    let credentials = Credentials::new("AKIDX", "secret", None, None, "test");
    let aws = AwsGrant::new(
        &settings,
        &context,
        Some(SharedCredentialsProvider::new(credentials)),
    );
    let imds = "169.254.169.254:443".parse().unwrap();
    let outbound = OutboundGrant::new(Allowlist::default(), OutboundLimits::default())
        .with_resolver(Arc::new(OneAddress(imds)));
    let grants = Grants {
        aws: Some(Arc::new(aws)),
        outbound: Arc::new(outbound),
        ..Grants::default()
    };
    let (result, _) = probe(
        json!({"method": "POST", "url": "https://sqs.us-east-1.amazonaws.com/", "body": "{}"}),
        &grants,
    )
    .await;
    assert_eq!(
        result["error"], "ErrorCode::DestinationIpProhibited",
        "{result}"
    );
}

#[tokio::test]
async fn an_aws_guest_finds_no_credential_in_its_environment_or_files() {
    let service = Sigv4Service::start().await;
    let grants = grants(&service, &["s3"], None);
    let (task, _) = task(&json!({"behaviour": "escape", "path": "/proc/self/environ"}).to_string());
    let outcome = match guest("adversary").run(task, &limits(), &grants).await {
        (TaskEnd::Report(outcome), _) => outcome,
        (TaskEnd::Abandoned(why), _) => panic!("abandoned: {why}"),
    };
    let seen = expect_success(&outcome);
    assert_eq!(seen["env"], json!([["AWS_REGION", "us-east-1"]]), "{seen}");
    assert!(seen["file"]["Err"].is_string(), "no file system: {seen}");
    let text = seen.to_string();
    for secret in [sigv4_service::ACCESS_KEY, sigv4_service::SECRET_KEY] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test]
async fn a_host_that_is_not_an_aws_endpoint_is_never_signed() {
    let service = Sigv4Service::start().await;
    let mut grants = grants(&service, &["sqs"], None);
    // The same service, reached by its own origin (allowed as an ordinary host), and the
    // guest asking for signing headers it hopes the host fills in.
    grants.outbound = Arc::new(OutboundGrant::new(
        Allowlist::parse(&[service.origin()]).unwrap(),
        OutboundLimits::default(),
    ));
    let (result, stats) = probe(
        json!({
            "method": "POST",
            "url": format!("{}/", service.origin()),
            "headers": {"x-amz-target": "AmazonSQS.SendMessage"},
            "body": "{}",
        }),
        &grants,
    )
    .await;
    let verdict = verdict(&result);
    assert_eq!(verdict["verified"], false, "{verdict}");
    assert_eq!(verdict["why"], "no Authorization header");
    assert!(stats.usage.outbound.aws_calls().is_empty());
}
