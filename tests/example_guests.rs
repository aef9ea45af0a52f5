//! The four example guests (Rust, Python, JavaScript, C) implement the same order contract
//! (guest/examples/README.md): each must give the same outputs and the same task errors.

mod common;

use common::*;
use serde_json::{json, Value};
use sfn_wasm_worker::sandbox::host_api::{BeatFuture, Heartbeat};
use sfn_wasm_worker::sandbox::{Grants, TaskEnd};
use std::sync::Arc;

/// A heartbeat sink that says the task has timed out.
struct TimedOutHeartbeat;

impl Heartbeat for TimedOutHeartbeat {
    fn beat(&self) -> BeatFuture<'_> {
        Box::pin(async { Err("the task timed out (TaskTimedOut)".to_string()) })
    }
}

const EXAMPLES: [&str; 4] = ["rust-order", "python-order", "js-order", "c-order"];

/// Valid orders and the output every example must return for them.
fn valid_orders() -> Vec<(Value, Value)> {
    vec![
        (
            json!({"order_id": "A-1", "items": [{"sku": "pen", "quantity": 2, "unit_price_cents": 350}], "discount_percent": 10}),
            json!({"order_id": "A-1", "lines": 1, "item_count": 2, "subtotal_cents": 700, "discount_cents": 70, "total_cents": 630, "status": "accepted"}),
        ),
        (
            json!({"order_id": "Ünïcode \"quoted\" \\ 🐎", "items": [
                {"sku": "a", "quantity": 1, "unit_price_cents": 999},
                {"sku": "b", "quantity": 3, "unit_price_cents": 0},
                {"sku": "c", "quantity": 7, "unit_price_cents": 1234}
            ], "note": "extra fields are ignored"}),
            json!({"order_id": "Ünïcode \"quoted\" \\ 🐎", "lines": 3, "item_count": 11, "subtotal_cents": 9637, "discount_cents": 0, "total_cents": 9637, "status": "accepted"}),
        ),
        (
            json!({"order_id": "B", "items": [{"sku": "x", "quantity": 3, "unit_price_cents": 333}], "discount_percent": 33}),
            json!({"order_id": "B", "lines": 1, "item_count": 3, "subtotal_cents": 999, "discount_cents": 329, "total_cents": 670, "status": "accepted"}),
        ),
    ]
}

/// Invalid orders: every example must fail them with `Order.Invalid`.
fn invalid_orders() -> Vec<Value> {
    vec![
        json!([1, 2, 3]),
        json!("just a string"),
        json!({"items": [{"sku": "x", "quantity": 1, "unit_price_cents": 1}]}),
        json!({"order_id": "", "items": [{"sku": "x", "quantity": 1, "unit_price_cents": 1}]}),
        json!({"order_id": 42, "items": [{"sku": "x", "quantity": 1, "unit_price_cents": 1}]}),
        json!({"order_id": "A", "items": []}),
        json!({"order_id": "A", "items": "none"}),
        json!({"order_id": "A", "items": [{"sku": "", "quantity": 1, "unit_price_cents": 1}]}),
        json!({"order_id": "A", "items": [{"sku": "x", "quantity": 0, "unit_price_cents": 1}]}),
        json!({"order_id": "A", "items": [{"sku": "x", "quantity": -2, "unit_price_cents": 1}]}),
        json!({"order_id": "A", "items": [{"sku": "x", "quantity": 1.5, "unit_price_cents": 1}]}),
        json!({"order_id": "A", "items": [{"sku": "x", "quantity": 1}]}),
        json!({"order_id": "A", "items": [{"sku": "x", "quantity": 1, "unit_price_cents": -1}]}),
        json!({"order_id": "A", "items": [{"sku": "x", "quantity": 1, "unit_price_cents": 1}], "discount_percent": 101}),
    ]
}

/// With `"heartbeat": true` the guest heartbeats once, and stops with Order.Cancelled when the
/// host says the task is over.
async fn check_heartbeat(name: &str) {
    let mut input = valid_orders()[0].0.clone();
    input["heartbeat"] = json!(true);
    let (beating, heartbeat) = task(&input.to_string());
    let (end, _) = guest(name)
        .run(beating, &limits(), &Grants::default())
        .await;
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    assert_eq!(expect_success(&outcome), valid_orders()[0].1, "{name}");
    assert_eq!(heartbeat.count(), 1, "{name} did not heartbeat once");

    let (mut cancelled, _) = task(&input.to_string());
    cancelled.heartbeat = Arc::new(TimedOutHeartbeat);
    let (end, _) = guest(name)
        .run(cancelled, &limits(), &Grants::default())
        .await;
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    let cause = expect_failure(&outcome, "Order.Cancelled");
    assert!(cause.contains("TaskTimedOut"), "{name}: {cause}");
}

async fn check_example(name: &str) {
    check_heartbeat(name).await;
    for (input, expected) in valid_orders() {
        let output = expect_success(&run(name, &input.to_string()).await);
        assert_eq!(output, expected, "{name} on {input}");
    }
    for input in invalid_orders() {
        let outcome = run(name, &input.to_string()).await;
        let cause = expect_failure(&outcome, "Order.Invalid");
        assert!(!cause.is_empty(), "{name} gave an empty cause for {input}");
    }
}

#[tokio::test]
async fn rust_example_prices_and_validates_orders() {
    check_example(EXAMPLES[0]).await;
}

#[tokio::test]
async fn python_example_prices_and_validates_orders() {
    check_example(EXAMPLES[1]).await;
}

#[tokio::test]
async fn javascript_example_prices_and_validates_orders() {
    check_example(EXAMPLES[2]).await;
}

#[tokio::test]
async fn c_example_prices_and_validates_orders() {
    check_example(EXAMPLES[3]).await;
}

/// The three fetch examples (Rust, Python, JavaScript; guest/examples/README.md) call a real
/// HTTP service the same way, and fail the same way when the activity does not allow it.
#[tokio::test]
async fn fetch_examples_call_an_allowed_service_and_fail_on_a_denied_one() {
    use sfn_wasm_worker::sandbox::outbound::policy::Allowlist;
    use sfn_wasm_worker::sandbox::outbound::{OutboundGrant, OutboundLimits};
    let service = common::http_service::HttpService::start().await;
    let allowed = Grants {
        outbound: Arc::new(OutboundGrant::new(
            Allowlist::parse(&[service.origin()]).unwrap(),
            OutboundLimits::default(),
        )),
        ..Grants::default()
    };
    let get = json!({"url": format!("{}/echo", service.origin())});
    let post = json!({"url": format!("{}/echo", service.origin()), "method": "POST", "body": {"sku": "pen"}});
    for example in ["rust-fetch", "python-fetch", "js-fetch"] {
        let run = |input: &Value, grants: &Grants| {
            let (task, _) = task(&input.to_string());
            let grants = grants.clone();
            async move {
                match guest(example).run(task, &limits(), &grants).await {
                    (TaskEnd::Report(outcome), _) => outcome,
                    (TaskEnd::Abandoned(why), _) => panic!("{example}: abandoned: {why}"),
                }
            }
        };
        let got = expect_success(&run(&get, &allowed).await);
        assert_eq!(got["status"], 200, "{example}: {got}");
        assert_eq!(got["body"]["method"], "GET", "{example}: {got}");
        let got = expect_success(&run(&post, &allowed).await);
        assert_eq!(got["body"]["method"], "POST", "{example}: {got}");
        let sent: Value = serde_json::from_str(got["body"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(sent, json!({"sku": "pen"}), "{example}: {got}");
        let denied = run(&get, &Grants::default()).await;
        let cause = expect_failure(&denied, "Fetch.RequestFailed");
        assert!(cause.contains(&service.origin()), "{example}: {cause}");
    }
    assert_eq!(service.requests(), 6);
}

/// The caching examples (README "Instances"): with `instance_reuse` the catalogue is built
/// by an instance's first task and cached for its later ones; with a fresh instance per
/// task every task builds it. Both give the same prices.
#[tokio::test]
async fn caching_examples_keep_their_catalogue_in_a_warm_instance_only() {
    use sfn_wasm_worker::sandbox::{InstancePolicy, Instances, TaskHandler};
    for name in ["python-cache", "js-cache"] {
        let make = |reuse| {
            Instances::new(
                guest(name),
                format!("arn:aws:states:us-east-1:123456789012:activity:{name}-{reuse}").into(),
                limits(),
                Grants::default(),
                InstancePolicy {
                    reuse,
                    ..InstancePolicy::default()
                },
            )
        };
        let (warm, fresh) = (make(5), make(1));
        let mut seen = Vec::new();
        for (instances, sku) in [
            (&warm, "SKU-7"),
            (&warm, "SKU-7"),
            (&warm, "SKU-19999"),
            (&fresh, "SKU-7"),
            (&fresh, "SKU-7"),
        ] {
            let (task, _) = task(&json!({"sku": sku, "quantity": 3}).to_string());
            let (TaskEnd::Report(outcome), _) =
                instances.run(task, &limits(), &Grants::default()).await
            else {
                panic!("{name}: abandoned");
            };
            let output = expect_success(&outcome);
            let (total, unit) = (
                output["total"].as_f64().unwrap(),
                output["unit_price"].as_f64().unwrap(),
            );
            assert!((total - unit * 3.0).abs() < 1e-9, "{name}: {output}");
            seen.push((
                output["catalogue"].as_str().unwrap().to_string(),
                output["tasks_served"].as_u64().unwrap(),
                output["unit_price"].clone(),
            ));
        }
        let states: Vec<(&str, u64)> = seen
            .iter()
            .map(|(state, served, _)| (state.as_str(), *served))
            .collect();
        assert_eq!(
            states,
            [
                ("built", 1),
                ("cached", 2),
                ("cached", 3),
                ("built", 1),
                ("built", 1)
            ],
            "{name}"
        );
        assert_eq!(seen[0].2, seen[3].2, "{name}: the price of SKU-7 changed");
        let (task, _) = task(&json!({"sku": "nope"}).to_string());
        let (TaskEnd::Report(outcome), _) = warm.run(task, &limits(), &Grants::default()).await
        else {
            panic!("{name}: abandoned");
        };
        expect_failure(&outcome, "Catalogue.UnknownSku");
    }
}
