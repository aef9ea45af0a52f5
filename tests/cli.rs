//! The `sfn-wasm-worker` binary: `invoke` (outcome JSON, exit codes, input sources) and
//! `check` (the load-time contract check, with its messages asserted).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

fn worker(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = worker_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sfn-wasm-worker");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not JSON ({err}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that `out` is a usage or load error (exit 2) whose stderr says `needle`.
fn assert_usage_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    assert!(stderr(out).contains(needle), "{}", stderr(out));
}

fn order() -> Value {
    json!({"order_id": "A-1", "items": [{"sku": "pen", "quantity": 2, "unit_price_cents": 350}]})
}

/// Writes a WAT component to a temporary file and returns its path.
fn wat_component(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat).expect("valid WAT")).unwrap();
    path
}

#[test]
fn invoke_success_prints_output_and_exits_0() {
    let guest = guest_path("rust-order");
    let out = worker(
        &[
            "invoke",
            guest.to_str().unwrap(),
            "--input",
            &order().to_string(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout_json(&out);
    assert_eq!(printed["status"], "succeeded");
    assert_eq!(printed["output"]["total_cents"], 700);
    assert!(
        stderr(&out).contains("order A-1 priced"),
        "guest log not on stderr: {}",
        stderr(&out)
    );
}

#[test]
fn invoke_task_failure_prints_error_and_cause_and_exits_1() {
    let guest = guest_path("rust-order");
    let out = worker(
        &[
            "invoke",
            guest.to_str().unwrap(),
            "--input",
            r#"{"order_id":"A"}"#,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let printed = stdout_json(&out);
    assert_eq!(printed["status"], "failed");
    assert_eq!(printed["error"], "Order.Invalid");
    assert!(printed["cause"].as_str().unwrap().contains("items"));
}

#[test]
fn invoke_reads_input_from_stdin_and_from_a_file() {
    let guest = guest_path("rust-order");
    let out = worker(
        &["invoke", guest.to_str().unwrap()],
        Some(&order().to_string()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["output"]["item_count"], 2);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, order().to_string()).unwrap();
    let out = worker(
        &[
            "invoke",
            guest.to_str().unwrap(),
            "--input-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout_json(&out)["output"]["order_id"], "A-1");
}

#[test]
fn invoke_applies_timeout_and_memory_limit_flags() {
    let guest = guest_path("adversary");
    let path = guest.to_str().unwrap();
    let out = worker(
        &[
            "invoke",
            path,
            "--timeout",
            "300ms",
            "--input",
            r#"{"behaviour":"loop"}"#,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"], "Wasm.Timeout");

    let out = worker(
        &[
            "invoke",
            path,
            "--memory-limit",
            "16MiB",
            "--input",
            r#"{"behaviour":"memory-bomb"}"#,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["error"], "Wasm.OutOfMemory");
}

#[test]
fn invoke_usage_and_load_errors_exit_2_with_a_precise_message() {
    let guest = guest_path("rust-order");
    let path = guest.to_str().unwrap();

    let out = worker(&["invoke", path, "--input", "{not json"], None);
    assert_usage_error(&out, "task input is not JSON");

    let out = worker(
        &["invoke", "/nonexistent/guest.wasm", "--input", "{}"],
        None,
    );
    assert_usage_error(&out, "/nonexistent/guest.wasm");

    let out = worker(
        &["invoke", path, "--input", "{}", "--memory-limit", "lots"],
        None,
    );
    assert_usage_error(&out, "invalid size \"lots\"");

    let dir = tempfile::tempdir().unwrap();
    let core = wat_component(dir.path(), "core.wasm", "(module)");
    let out = worker(&["invoke", core.to_str().unwrap(), "--input", "{}"], None);
    assert_usage_error(&out, "is a core WebAssembly module, not a component");
}

#[test]
fn check_accepts_a_good_component_and_lists_its_imports() {
    let guest = guest_path("adversary");
    let out = worker(&["check", guest.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("sfn:activity/host@0.1.0"), "{text}");
    assert!(text.contains("wasi:filesystem/preopens"), "{text}");
    assert!(text.contains("handle"), "{text}");
    assert!(text.contains("ok: this host can run it"), "{text}");
}

#[test]
fn check_says_whether_a_component_calls_out_over_http() {
    let calls_out = guest_path("http-probe");
    let out = worker(&["check", calls_out.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let line = text
        .lines()
        .find(|line| line.contains("wasi:http/outgoing-handler@0.2"))
        .unwrap_or_else(|| panic!("no wasi:http import listed: {text}"));
    assert!(line.contains("[activity.outbound] allowed_hosts"), "{line}");

    let computes = guest_path("rust-order");
    let out = worker(&["check", computes.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("wasi:http"), "{text}");
}

#[test]
fn invoke_allow_outbound_refuses_a_malformed_origin() {
    let guest = guest_path("http-probe");
    let out = worker(
        &[
            "invoke",
            guest.to_str().unwrap(),
            "--input",
            "{}",
            "--allow-outbound",
            "api.example.com",
        ],
        None,
    );
    assert_usage_error(&out, "scheme://host[:port]");
}

#[test]
fn check_rejects_a_component_without_handle() {
    let dir = tempfile::tempdir().unwrap();
    let empty = wat_component(dir.path(), "empty.wasm", "(component)");
    let out = worker(&["check", empty.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("does not implement the world sfn:activity/handler@0.1.0"),
        "{text}"
    );
    assert!(text.contains("`handle`"), "{text}");
}

#[test]
fn check_rejects_handle_with_the_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = wat_component(
        dir.path(),
        "wrong-type.wasm",
        r#"(component
             (core module $m (func (export "handle") (result i32) i32.const 7))
             (core instance $i (instantiate $m))
             (func $handle (result u32) (canon lift (core func $i "handle")))
             (export "handle" (func $handle)))"#,
    );
    let out = worker(&["check", wrong.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("does not implement the world sfn:activity/handler@0.1.0"),
        "{text}"
    );
    assert!(text.contains("handle"), "{text}");
    // invoke refuses it the same way, before running anything.
    let out = worker(&["invoke", wrong.to_str().unwrap(), "--input", "{}"], None);
    assert_usage_error(&out, "does not implement the world");
}

#[test]
fn check_rejects_an_import_the_host_does_not_provide() {
    let dir = tempfile::tempdir().unwrap();
    let needy = wat_component(
        dir.path(),
        "needy.wasm",
        r#"(component (import "acme:db/query@1.0.0" (instance (export "run" (func)))))"#,
    );
    let out = worker(&["check", needy.to_str().unwrap()], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("acme:db/query@1.0.0"), "{text}");
    assert!(text.contains("NOT PROVIDED"), "{text}");
    assert!(
        text.contains("imports something this host does not provide"),
        "{text}"
    );
}

#[test]
fn run_refuses_a_bad_config_before_polling_with_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        "[[activity]]\narn = \"arn:aws:states:us-east-1:1:activity:a\"\ncomponent = \"nope.wasm\"\n",
    )
    .unwrap();
    let out = worker(&["run", "--config", config.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("worker.toml")
            && err.contains("key `component`")
            && err.contains("guest/build.sh"),
        "{err}"
    );

    let guest = guest_path("rust-order");
    let out = worker(
        &[
            "run",
            "--activity-arn",
            "orders",
            "--component",
            guest.to_str().unwrap(),
        ],
        None,
    );
    assert_usage_error(&out, "is not an activity ARN");

    // A component that does not match the world is refused before any poll, naming the activity.
    let wrong = wat_component(dir.path(), "empty.wasm", "(component)");
    let arn = "arn:aws:states:us-east-1:000000000000:activity:wrong";
    let out = worker(
        &[
            "run",
            "--activity-arn",
            arn,
            "--component",
            wrong.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(arn) && err.contains("does not implement the world"),
        "{err}"
    );
}

/// With `--config` the file describes the activities: every single-activity flag (clap
/// refuses it) and every grant flag (the worker does, naming the flags' help heading).
#[test]
fn run_refuses_single_activity_and_grant_flags_next_to_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(&config, "").unwrap();
    let dir_grant = format!("{}:/data", dir.path().display());
    let single_activity = "cannot be used with";
    let grant = "What the guest is granted";
    for (flag, value, said) in [
        ("--timeout", "5s", single_activity),
        ("--max-concurrency", "2", single_activity),
        ("--memory-limit", "64MiB", single_activity),
        ("--heartbeat-interval", "5s", single_activity),
        ("--env", "KEY=VALUE", grant),
        ("--dir", dir_grant.as_str(), grant),
        ("--allow-outbound", "https://api.example.com", grant),
    ] {
        let out = worker(
            &["run", "--config", config.to_str().unwrap(), flag, value],
            None,
        );
        assert_usage_error(&out, said);
        let named = if said == grant {
            "--activity-arn"
        } else {
            flag
        };
        assert!(stderr(&out).contains(named), "{}", stderr(&out));
    }
}

#[test]
fn an_ambiguous_size_is_refused_with_both_readings() {
    let guest = guest_path("rust-order");
    let out = worker(
        &[
            "invoke",
            guest.to_str().unwrap(),
            "--input",
            "{}",
            "--memory-limit",
            "64m",
        ],
        None,
    );
    assert_usage_error(&out, "64MiB");
    assert!(stderr(&out).contains("64MB"), "{}", stderr(&out));
}

#[test]
fn a_precompiled_component_runs_without_compiling_and_a_foreign_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let guest = guest_path("rust-order");
    let cwasm = dir.path().join("rust-order.cwasm");
    let out = worker(
        &[
            "compile",
            guest.to_str().unwrap(),
            "-o",
            cwasm.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let order = order().to_string();
    let out = worker(
        &[
            "invoke",
            cwasm.to_str().unwrap(),
            "--no-cache",
            "--input",
            &order,
        ],
        None,
    );
    assert_eq!(stdout_json(&out)["status"], "succeeded", "{}", stderr(&out));

    // Built by an engine configured otherwise (no epoch interruption): refused, with the fix.
    let foreign = wasmtime::Engine::new(wasmtime::Config::new().epoch_interruption(false)).unwrap();
    let artefact = foreign
        .precompile_component(&std::fs::read(&guest).unwrap())
        .unwrap();
    let alien = dir.path().join("alien.cwasm");
    std::fs::write(&alien, artefact).unwrap();
    let out = worker(
        &["invoke", alien.to_str().unwrap(), "--input", &order],
        None,
    );
    assert_usage_error(&out, "incompatible engine");
    assert!(
        stderr(&out).contains("sfn-wasm-worker compile"),
        "{}",
        stderr(&out)
    );

    // `compile` checks the component against the world first.
    let empty = wat_component(dir.path(), "empty.wasm", "(component)");
    let out = worker(
        &[
            "compile",
            empty.to_str().unwrap(),
            "-o",
            cwasm.to_str().unwrap(),
        ],
        None,
    );
    assert_usage_error(&out, "does not implement the world");
}

#[test]
fn a_precompiled_core_module_is_refused_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let engine = wasmtime::Engine::default();
    let module = engine
        .precompile_module(&wat::parse_str("(module)").unwrap())
        .unwrap();
    let path = dir.path().join("module.cwasm");
    std::fs::write(&path, module).unwrap();
    let out = worker(&["invoke", path.to_str().unwrap(), "--input", "{}"], None);
    assert_usage_error(&out, "precompiled core module, not a component");
    assert!(
        stderr(&out).contains("sfn-wasm-worker compile"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_cache_that_cannot_be_written_is_logged_and_bypassed() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_directory = dir.path().join("file");
    std::fs::write(&not_a_directory, "").unwrap();
    let cache = not_a_directory.join("cache");
    let guest = guest_path("rust-order");
    let order = order().to_string();
    let out = worker(
        &[
            "invoke",
            guest.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--input",
            &order,
        ],
        None,
    );
    assert_eq!(stdout_json(&out)["status"], "succeeded", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the component cache is not writable"),
        "{}",
        stderr(&out)
    );
}

/// Every kind of bad component (empty, random bytes, truncated, a core module, another
/// world, 100 MB of garbage behind a component header) is refused by `check`, `invoke` and
/// `run` alike, with exit code 2 and a message naming the file; `run` refuses before any poll
/// even when the bad component is the second of two activities.
#[test]
fn bad_components_are_refused_by_check_invoke_and_run_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(guest_path("rust-order")).unwrap();
    let mut pseudo_random = 0x2545_f491_4f6c_dd1d_u64;
    let random: Vec<u8> = (0..4096)
        .map(|_| {
            pseudo_random ^= pseudo_random << 13;
            pseudo_random ^= pseudo_random >> 7;
            pseudo_random ^= pseudo_random << 17;
            pseudo_random as u8
        })
        .collect();
    let mut huge = good[..8].to_vec();
    huge.resize(100 << 20, 0xff);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.wasm", Vec::new(), "not a WebAssembly file"),
        ("random.wasm", random, "not a WebAssembly file"),
        ("truncated.wasm", good[..good.len() / 2].to_vec(), "not a valid WebAssembly component"),
        ("core.wasm", wat::parse_str("(module)").unwrap(), "core WebAssembly module"),
        (
            "other-world.wasm",
            wat::parse_str(r#"(component (core module $m (func (export "f"))) (core instance $i (instantiate $m)) (func (export "run") (canon lift (core func $i "f"))))"#).unwrap(),
            "does not implement the world",
        ),
        ("huge.wasm", huge, "not a valid WebAssembly component"),
        (
            "start-traps.wasm",
            wat::parse_str(handler_component("unreachable")).unwrap(),
            "fails while it is instantiated",
        ),
        (
            "start-allocates-too-much.wasm",
            // Asks for 4 GiB of linear memory (past the default memory_limit of 128 MiB) and
            // aborts when refused, as an allocator does.
            wat::parse_str(handler_component(
                "(if (i32.eq (memory.grow (i32.const 65535)) (i32.const -1)) (then unreachable))",
            ))
            .unwrap(),
            "Wasm.OutOfMemory",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let file = path.to_str().unwrap();
        for args in [
            vec!["check", file],
            vec!["invoke", file, "--input", "{}"],
            vec![
                "run",
                "--activity-arn",
                "arn:aws:states:us-east-1:000000000000:activity:bad",
                "--component",
                file,
                "--endpoint-url",
                "http://127.0.0.1:9",
                "--region",
                "us-east-1",
            ],
        ] {
            let out = worker(&args, None);
            // `check` prints its report, verdict included, on stdout.
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            assert_eq!(out.status.code(), Some(2), "{name}, {}: {said}", args[0]);
            assert!(
                said.contains(name) && said.contains(reason),
                "{name}, {}: {said}",
                args[0]
            );
        }
        let config = dir.path().join("two.toml");
        write_config(
            &config,
            json!({
                "worker": {"region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"},
                "activity": [
                    {
                        "arn": "arn:aws:states:us-east-1:000000000000:activity:good",
                        "component": path_value(&guest_path("rust-order")),
                    },
                    {
                        "arn": "arn:aws:states:us-east-1:000000000000:activity:bad",
                        "component": file,
                    },
                ],
            }),
        );
        let out = worker(&["run", "--config", config.to_str().unwrap()], None);
        assert_usage_error(&out, "activity:bad");
        assert!(
            !stderr(&out).contains("serving activity"),
            "{name}: started half-loaded: {}",
            stderr(&out)
        );
    }
}
