//! The guest kits for Python and JavaScript (guest/kits): how each way a handler ends becomes
//! the task's outcome: an uncaught exception named by its class with its message first, a
//! chosen task error, input that is not JSON, a return value that is not JSON, and `log` and
//! `heartbeat` as plain functions, and running out of memory named as for every guest.
//! `config` (wasi:config) in every kit and the Rust SDK, and the kit's TypeScript declarations
//! checked by `tsc` on a typed guest that runs. (Rust's SDK outcomes: tests/outcomes.rs.)

mod common;

use common::*;
use serde_json::{json, Value};
use sfn_wasm_worker::sandbox::{Grants, Outcome, TaskEnd};

const KITS: [(&str, &str); 2] = [("python-kit", "ValueError"), ("js-kit", "TypeError")];

async fn run_raw(name: &str, input: &str) -> (Outcome, u64) {
    let (task, heartbeat) = task(input);
    match guest(name).run(task, &limits(), &Grants::default()).await {
        (TaskEnd::Report(outcome), _) => (outcome, heartbeat.count()),
        (TaskEnd::Abandoned(why), _) => panic!("{name}: abandoned: {why}"),
    }
}

async fn run_do(name: &str, what: &str) -> Outcome {
    run_raw(name, &json!({ "do": what }).to_string()).await.0
}

#[tokio::test]
async fn an_uncaught_exception_is_named_by_its_class_with_its_message_first() {
    for (kit, builtin) in KITS {
        let cause = expect_failure(&run_do(kit, "raise").await, builtin);
        assert!(cause.starts_with("bad sku"), "{kit}: {cause}");
        // The innermost call (where it was raised) comes before the handler's frame.
        let (inner, outer) = (cause.find("heck").unwrap(), cause.rfind("handle").unwrap());
        assert!(inner < outer, "{kit}: innermost call not first: {cause}");

        let cause = expect_failure(&run_do(kit, "raise-custom").await, "OrderRejected");
        assert!(cause.starts_with("customer is blocked"), "{kit}: {cause}");
    }
}

#[tokio::test]
async fn a_chosen_task_error_is_reported_exactly() {
    for (kit, _) in KITS {
        let outcome = run_do(kit, "task-error").await;
        assert_eq!(
            outcome,
            Outcome::Failed {
                error: "Order.Invalid".into(),
                cause: "items must be a non-empty array".into()
            },
            "{kit}"
        );
    }
}

#[tokio::test]
async fn input_that_is_not_json_is_task_invalid_input() {
    for (kit, _) in KITS {
        let (outcome, _) = run_raw(kit, "{not json").await;
        let cause = expect_failure(&outcome, "Task.InvalidInput");
        assert!(cause.contains("not JSON"), "{kit}: {cause}");
    }
    let (outcome, _) = run_raw("rust-order", "{not json").await;
    expect_failure(&outcome, "Task.InvalidInput");
}

#[tokio::test]
async fn a_return_value_that_is_not_json_is_worker_invalid_output_naming_it() {
    let cause = expect_failure(
        &run_do("python-kit", "unserialisable").await,
        "Worker.InvalidOutput",
    );
    assert!(cause.contains("set"), "{cause}");
    let cause = expect_failure(&run_do("python-kit", "nan").await, "Worker.InvalidOutput");
    assert!(cause.contains("float"), "{cause}");
    let cause = expect_failure(&run_do("js-kit", "undefined").await, "Worker.InvalidOutput");
    assert!(cause.contains("undefined"), "{cause}");
    let cause = expect_failure(&run_do("js-kit", "bigint").await, "Worker.InvalidOutput");
    assert!(cause.contains("BigInt"), "{cause}");
    assert_eq!(expect_success(&run_do("js-kit", "number").await), json!(42));
}

#[tokio::test]
async fn thrown_strings_and_legacy_objects_keep_their_meaning() {
    assert_eq!(
        run_do("js-kit", "throw-string").await,
        Outcome::failed("Error", "plain text")
    );
    assert_eq!(
        run_do("js-kit", "throw-object").await,
        Outcome::failed("Legacy.Error", "")
    );
}

#[tokio::test]
async fn log_and_heartbeat_are_plain_functions_and_the_context_is_there() {
    for (kit, _) in KITS {
        let (outcome, beats) = run_raw(kit, &json!({"do": "heartbeat"}).to_string()).await;
        assert_eq!(expect_success(&outcome), json!({"beat": true}), "{kit}");
        assert_eq!(beats, 1, "{kit}");
        assert_eq!(
            expect_success(&run_do(kit, "log").await),
            json!({"logged": true}),
            "{kit}"
        );
        let echoed: Value = expect_success(&run_do(kit, "echo").await);
        assert_eq!(
            echoed["task_id"],
            sfn_wasm_worker::worker::sfn::task_id("token"),
            "{kit}"
        );
        assert!(
            echoed["activity_arn"]
                .as_str()
                .unwrap()
                .contains(":activity:"),
            "{kit}"
        );
    }
}

/// Runs `what` on the kit guest `kit` with a memory limit of `memory_limit` bytes.
async fn run_do_within(kit: &str, what: &str, memory_limit: u64) -> Outcome {
    let limits = sfn_wasm_worker::sandbox::TaskLimits {
        memory_limit,
        ..limits()
    };
    run_with(kit, &json!({ "do": what }).to_string(), &limits)
        .await
        .0
}

#[tokio::test]
async fn an_uncaught_out_of_memory_error_is_wasm_out_of_memory_naming_the_limit() {
    // Each kit's language, at a limit above what its runtime needs to start.
    for (kit, limit) in [("python-kit", 96u64 << 20), ("js-kit", 64 << 20)] {
        let cause = expect_failure(
            &run_do_within(kit, "allocate", limit).await,
            "Wasm.OutOfMemory",
        );
        assert!(
            cause.contains(&format!("limit is {limit} bytes"))
                || cause.contains(&format!("limit of {limit} bytes")),
            "{kit}: {cause}"
        );
        // A handler that catches it keeps its own error.
        let outcome = run_do_within(kit, "allocate-caught", limit).await;
        assert_eq!(
            outcome,
            Outcome::Failed {
                error: "Order.TooLarge".into(),
                cause: "the order does not fit in memory".into()
            },
            "{kit}"
        );
    }
}

/// (Rust, whose allocation failure aborts after the refused grow: tests/outcomes.rs.)
#[tokio::test]
async fn a_c_guest_out_of_memory_is_wasm_out_of_memory_naming_the_limit() {
    let limit = 8u64 << 20;
    let limits = sfn_wasm_worker::sandbox::TaskLimits {
        memory_limit: limit,
        ..limits()
    };
    // malloc returns NULL while the order is parsed (or the input cannot be lowered).
    let order = json!({"order_id": "x".repeat(5 << 20), "items": []}).to_string();
    let (outcome, _) = run_with("c-order", &order, &limits).await;
    let cause = expect_failure(&outcome, "Wasm.OutOfMemory");
    assert!(cause.contains(&format!("{limit} bytes")), "{cause}");
}

/// Grants with `[activity.config] values` (no secrets: nothing to fetch).
fn config_grants(values: &[(&str, &str)]) -> Grants {
    let mut settings = sfn_wasm_worker::sandbox::CapabilitySettings::default();
    for (key, value) in values {
        settings
            .config
            .values
            .insert(key.to_string(), value.to_string());
    }
    settings.grants(&Default::default())
}

#[tokio::test]
async fn config_gives_each_guest_its_values_and_nothing_for_other_keys() {
    let grants = config_grants(&[("rate", "1.5"), ("region", "EU"), ("api_key", "k3y")]);
    let input = json!({"amount": 4, "probe": ["region", "unknown"]}).to_string();
    for name in ["python-config", "js-config", "rust-config"] {
        let (job, _) = task(&input);
        let (TaskEnd::Report(outcome), _) = guest(name).run(job, &limits(), &grants).await else {
            panic!("{name}: abandoned");
        };
        let output = expect_success(&outcome);
        assert_eq!(output["region"], "EU", "{name}: {output}");
        assert_eq!(output["total"], 6.0, "{name}: {output}");
        assert_eq!(
            output["api_key"],
            json!({"length": 3, "checksum": 107 + 51 + 121}),
            "{name}: {output}"
        );
        assert_eq!(
            output["present"],
            json!({"region": true, "unknown": false}),
            "{name}: {output}"
        );
        // Without the table, every key is absent.
        let (job, _) = task(&input);
        let (TaskEnd::Report(outcome), _) =
            guest(name).run(job, &limits(), &Grants::default()).await
        else {
            panic!("{name}: abandoned");
        };
        let output = expect_success(&outcome);
        assert_eq!(
            (&output["region"], &output["api_key"]),
            (&Value::Null, &Value::Null),
            "{name}: {output}"
        );
        // A bad value is the guest's own error.
        let (job, _) = task(&input);
        let bad = config_grants(&[("rate", "fast")]);
        let (TaskEnd::Report(outcome), _) = guest(name).run(job, &limits(), &bad).await else {
            panic!("{name}: abandoned");
        };
        expect_failure(&outcome, "Quote.BadRate");
    }
}

/// The JavaScript kit's TypeScript compiler (guest/js-toolchain), checking `tsconfig`.
fn tsc(project: &std::path::Path) -> std::process::Output {
    std::process::Command::new(repo_root().join("guest/js-toolchain/node_modules/.bin/tsc"))
        .arg("-p")
        .arg(project)
        .output()
        .expect("running tsc (guest/build.sh installs guest/js-toolchain)")
}

#[tokio::test]
async fn the_typescript_declarations_check_a_typed_guest_that_runs() {
    let project = repo_root().join("guest/test-guests/ts-kit/tsconfig.json");
    let checked = tsc(&project);
    assert!(
        checked.status.success(),
        "tsc --noEmit on the ts-kit guest:\n{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    // The declarations are strict: a handler that misuses them does not check.
    let dir = tempfile::tempdir().unwrap();
    let kit = repo_root().join("guest/kits/js/sfn-activity.js");
    std::fs::write(
        dir.path().join("app.ts"),
        format!(
            "import {{ config, handler, TaskError }} from {kit:?};\n\
             export const handle = handler((task: {{ n: number }}, ctx) => {{\n\
               const limit: number = config(\"limit\");\n\
               ctx.log(\"loud\", String(task.n));\n\
               throw new TaskError(42);\n\
             }});\n"
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(&project).unwrap();
    std::fs::write(dir.path().join("tsconfig.json"), config).unwrap();
    let refused = tsc(&dir.path().join("tsconfig.json"));
    let errors = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{errors}");
    for line in ["app.ts(3,", "app.ts(4,", "app.ts(5,"] {
        assert!(
            errors.contains(line),
            "no type error on line {line}:\n{errors}"
        );
    }
    // The typed guest, bundled by esbuild, reads its values.
    let (job, _) = task(&json!({"op": "config", "keys": ["greeting", "nope"]}).to_string());
    let grants = config_grants(&[("greeting", "hi")]);
    let (TaskEnd::Report(outcome), _) = guest("ts-kit").run(job, &limits(), &grants).await else {
        panic!("ts-kit: abandoned");
    };
    let output = expect_success(&outcome);
    assert_eq!(
        output,
        json!({"values": {"greeting": "hi", "nope": null}, "deadline_ok": true})
    );
    let (job, _) = task(&json!({"op": "fail"}).to_string());
    let (TaskEnd::Report(outcome), _) = guest("ts-kit").run(job, &limits(), &grants).await else {
        panic!("ts-kit: abandoned");
    };
    expect_failure(&outcome, "Kit.Failed");
}
