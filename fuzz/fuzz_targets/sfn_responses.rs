//! Whatever Step Functions (or a proxy in front of it) answers to the worker's four calls:
//! any status, content type and body go through aws-sdk-sfn and the worker's sorting of
//! errors. No panic; a task only from a success answer, with a token; a report only counts
//! as landed on a success answer; a 5xx is always retried.
#![no_main]

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_smithy_async::rt::sleep::{SharedAsyncSleep, TokioSleep};
use aws_smithy_http_client::test_util::infallible_client_fn;
use libfuzzer_sys::fuzz_target;
use sfn_wasm_worker::worker::sfn::{ApiError, SfnClient};
use std::sync::{Mutex, OnceLock};

/// The answer the fake HTTP client gives next: status, content type, body.
static ANSWER: Mutex<(u16, &str, Vec<u8>)> = Mutex::new((200, "", Vec::new()));

const STATUSES: [u16; 14] = [
    200, 200, 200, 200, 204, 302, 400, 403, 404, 413, 418, 429, 500, 503,
];
const CONTENT_TYPES: [&str; 4] = [
    "application/x-amz-json-1.0",
    "application/json",
    "text/html",
    "",
];

fn client() -> &'static (tokio::runtime::Runtime, SfnClient) {
    static CLIENT: OnceLock<(tokio::runtime::Runtime, SfnClient)> = OnceLock::new();
    CLIENT.get_or_init(|| {
        // Paused time: the SDK's retry backoff and timeouts pass at once.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let http = infallible_client_fn(|_request| {
            let answer = ANSWER.lock().unwrap();
            let mut response = http::Response::builder().status(answer.0);
            if !answer.1.is_empty() {
                response = response.header("content-type", answer.1);
            }
            response.body(answer.2.clone()).unwrap()
        });
        let sdk = SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDFUZZ", "fuzz", None, None, "fuzz",
            )))
            .http_client(http)
            .sleep_impl(SharedAsyncSleep::new(TokioSleep::new()))
            .build();
        let client = {
            let _entered = runtime.enter();
            SfnClient::new(&sdk)
        };
        (runtime, client)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(([status, content_type, call], body)) = data.split_first_chunk::<3>() else {
        return;
    };
    let status = STATUSES[*status as usize % STATUSES.len()];
    *ANSWER.lock().unwrap() = (
        status,
        CONTENT_TYPES[*content_type as usize % CONTENT_TYPES.len()],
        body.to_vec(),
    );
    let (runtime, client) = client();
    let success = (200..300).contains(&status);
    let arn = "arn:aws:states:us-east-1:123456789012:activity:fuzz";
    let report = runtime.block_on(async {
        match call % 4 {
            0 => {
                let polled = client.poll(arn, "fuzz-worker").await;
                if let Ok(Some(task)) = &polled {
                    assert!(success, "a task from a {status} answer");
                    assert!(!task.token.is_empty());
                }
                polled.map(drop)
            }
            1 => client.send_success("token", "{}").await,
            2 => client.send_failure("token", "Fuzz.Error", "cause").await,
            _ => client.send_heartbeat("token").await,
        }
    });
    match report {
        Ok(()) => assert!(success, "a call counted as landed on a {status} answer"),
        Err(ApiError::Retryable(_)) => {}
        Err(other) => {
            assert!(status < 500, "a {status} answer not retried: {other:?}");
            assert!(!other.to_string().is_empty());
        }
    }
});
