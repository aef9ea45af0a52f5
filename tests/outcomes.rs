//! Every row of the outcome table (README "Outcomes"), and every adversarial guest behaviour:
//! each is contained, reported as documented, and the next task runs normally.

mod common;

use common::*;
use serde_json::json;
use sfn_wasm_worker::sandbox::cpu_share::CpuShare;
use sfn_wasm_worker::sandbox::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::sandbox::host_api::InterruptReason;
use sfn_wasm_worker::sandbox::outcome::{self, MAX_CAUSE_CHARS, MAX_ERROR_CHARS};
use sfn_wasm_worker::sandbox::wasi::WasiGrant;
use sfn_wasm_worker::sandbox::{Grants, Outcome, Runtime, TaskEnd, TaskLimits};
use std::time::{Duration, Instant};

const ADVERSARY: &str = "adversary";

/// After a misbehaving task, a normal task on the same component still succeeds.
async fn assert_next_task_runs() {
    let output = expect_success(&run(ADVERSARY, r#"{"behaviour":"echo","n":1}"#).await);
    assert_eq!(output, json!({"behaviour": "echo", "n": 1}));
}

fn behaviour(name: &str) -> String {
    json!({ "behaviour": name }).to_string()
}

#[tokio::test]
async fn ok_json_is_success_with_that_output() {
    let input = r#"{"behaviour":"echo","nested":{"list":[1,2.5,"three",null,true]},"unicode":"žluťoučký 🐎"}"#;
    let output = expect_success(&run(ADVERSARY, input).await);
    assert_eq!(
        output,
        serde_json::from_str::<serde_json::Value>(input).unwrap()
    );
}

#[tokio::test]
async fn ok_text_that_is_not_json_is_invalid_output() {
    let cause = expect_failure(
        &run(ADVERSARY, &behaviour("non-json")).await,
        outcome::INVALID_OUTPUT,
    );
    assert!(
        cause.contains("not JSON") && cause.contains("this is { not json"),
        "{cause}"
    );
    assert_next_task_runs().await;
}

#[tokio::test]
async fn ok_json_that_step_functions_accepts_is_success_at_any_depth_and_with_lone_surrogates() {
    let raw = |text: &str| json!({"behaviour": "raw-output", "text": text}).to_string();
    // The deepest nesting that fits in the output limit.
    let half = outcome::MAX_OUTPUT_BYTES / 2;
    let deep = format!("{}{}", "[".repeat(half), "]".repeat(half));
    let Outcome::Succeeded { output } = run(ADVERSARY, &raw(&deep)).await else {
        panic!("a {half}-deep output was refused");
    };
    assert_eq!(output, deep);
    // What JSON.stringify writes for a string holding a lone surrogate.
    let lone = r#"{"s":"\ud800","t":"x\udfff"}"#;
    let Outcome::Succeeded { output } = run(ADVERSARY, &raw(lone)).await else {
        panic!("a lone surrogate escape was refused");
    };
    assert_eq!(output, lone);
    // Still refused: a number no double holds, shown as the text it was.
    let cause = expect_failure(
        &run(ADVERSARY, &raw("[1e400]")).await,
        outcome::INVALID_OUTPUT,
    );
    assert!(
        cause.contains("1e400") && cause.contains("64-bit float"),
        "{cause}"
    );
    let cause = expect_failure(
        &run(ADVERSARY, &raw("not\u{2028}json")).await,
        outcome::INVALID_OUTPUT,
    );
    assert!(cause.contains("\"not\u{2028}json\""), "{cause}");
    assert_next_task_runs().await;
}

#[tokio::test]
async fn ok_json_over_256_kib_is_output_too_large() {
    let outcome = run(
        ADVERSARY,
        &json!({"behaviour": "huge-output", "bytes": 300_000}).to_string(),
    )
    .await;
    let cause = expect_failure(&outcome, outcome::OUTPUT_TOO_LARGE);
    assert!(cause.contains("262144"), "{cause}");
    // Just under the limit still succeeds.
    let outcome = run(
        ADVERSARY,
        &json!({"behaviour": "huge-output", "bytes": 262_000}).to_string(),
    )
    .await;
    expect_success(&outcome);
    assert_next_task_runs().await;
}

#[tokio::test]
async fn err_is_failure_with_the_guests_error_and_cause() {
    let input = json!({"behaviour": "fail", "error": "Order.Invalid", "cause": "no items"});
    let cause = expect_failure(&run(ADVERSARY, &input.to_string()).await, "Order.Invalid");
    assert_eq!(cause, "no items");
}

#[tokio::test]
async fn err_error_and_cause_are_truncated_on_utf8_boundaries() {
    let long_error = "É".repeat(MAX_ERROR_CHARS + 50);
    let long_cause = "ž".repeat(MAX_CAUSE_CHARS + 1_000);
    let input = json!({"behaviour": "fail", "error": long_error, "cause": long_cause});
    let outcome = run(ADVERSARY, &input.to_string()).await;
    let sfn_wasm_worker::sandbox::outcome::Outcome::Failed { error, cause } = outcome else {
        panic!("expected a failure");
    };
    assert_eq!(error.chars().count(), MAX_ERROR_CHARS);
    assert!(error.starts_with("ÉÉÉ") && error.ends_with('…'));
    assert_eq!(cause.chars().count(), MAX_CAUSE_CHARS);
    assert!(cause.starts_with("žžž") && cause.ends_with('…'));
}

#[tokio::test]
async fn panic_is_a_trap_with_message_backtrace_and_stderr() {
    let cause = expect_failure(&run(ADVERSARY, &behaviour("panic")).await, outcome::TRAP);
    assert!(cause.contains("wasm trap"), "{cause}");
    assert!(cause.contains("wasm backtrace"), "{cause}");
    assert!(
        cause.contains("adversary: about to panic"),
        "stderr tail missing: {cause}"
    );
    assert!(
        cause.contains("adversary panicked on purpose"),
        "panic message missing: {cause}"
    );
    // What the author wrote leads: the panic message is in the cause's first lines.
    let first_lines: String = cause.lines().take(4).collect::<Vec<_>>().join("\n");
    assert!(
        first_lines.contains("adversary panicked on purpose"),
        "the panic message does not lead: {cause}"
    );
    assert_next_task_runs().await;
}

#[tokio::test]
async fn deep_recursion_is_a_trap_naming_the_stack_overflow() {
    let cause = expect_failure(
        &run(ADVERSARY, &behaviour("recursion")).await,
        outcome::TRAP,
    );
    assert!(cause.contains("call stack exhausted"), "{cause}");
    assert_next_task_runs().await;
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_its_deadline() {
    let limits = TaskLimits {
        timeout: Duration::from_millis(500),
        ..limits()
    };
    let started = Instant::now();
    let (outcome, _) = run_with(ADVERSARY, &behaviour("loop"), &limits).await;
    let cause = expect_failure(&outcome, outcome::TIMEOUT);
    assert!(cause.contains("500ms"), "{cause}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_next_task_runs().await;
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_at_its_deadline() {
    let limits = TaskLimits {
        timeout: Duration::from_millis(300),
        ..limits()
    };
    let input = json!({"behaviour": "sleep", "ms": 60_000}).to_string();
    let started = Instant::now();
    let (outcome, _) = run_with(ADVERSARY, &input, &limits).await;
    expect_failure(&outcome, outcome::TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_guests_do_not_starve_the_runtime() {
    // More spinning guests than runtime threads: the epoch yields keep timers firing.
    let limits = TaskLimits {
        timeout: Duration::from_millis(800),
        ..limits()
    };
    let spinners: Vec<_> = (0..4)
        .map(|_| {
            let limits = limits.clone();
            tokio::spawn(async move { run_with(ADVERSARY, &behaviour("loop"), &limits).await.0 })
        })
        .collect();
    let ticked = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::time::sleep(Duration::from_millis(50)),
    )
    .await;
    assert!(ticked.is_ok(), "a timer could not fire while guests spun");
    for spinner in spinners {
        expect_failure(&spinner.await.unwrap(), outcome::TIMEOUT);
    }
}

/// An activity's CPU share (one core here): a guest that has run past a tick and then
/// waits in a host call (a sleep) gives its turn back, so its activity's other guests run
/// meanwhile instead of queuing until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_waiting_in_a_host_call_gives_back_its_cpu_turn() {
    let grants = Grants {
        cpu: CpuShare::cores(1),
        ..Grants::default()
    };
    let ended_at = |input: serde_json::Value| {
        let grants = grants.clone();
        tokio::spawn(async move {
            let (task, _) = task(&input.to_string());
            let (end, _) = guest(ADVERSARY).run(task, &limits(), &grants).await;
            let TaskEnd::Report(outcome) = end else {
                panic!("abandoned")
            };
            expect_success(&outcome);
            Instant::now()
        })
    };
    let sleeper = ended_at(json!({"behaviour": "spin", "ms": 50, "then_sleep_ms": 1500}));
    tokio::time::sleep(Duration::from_millis(200)).await; // it has ticked and sleeps now
    let spinners: Vec<_> = (0..4)
        .map(|_| ended_at(json!({"behaviour": "spin", "ms": 60})))
        .collect();
    let sleeper_ended = sleeper.await.unwrap();
    for spinner in spinners {
        assert!(
            spinner.await.unwrap() < sleeper_ended,
            "a spinner waited for the sleeping guest's turn"
        );
    }
}

#[tokio::test]
async fn memory_bomb_is_out_of_memory() {
    let limits = TaskLimits {
        memory_limit: 32 << 20,
        ..limits()
    };
    let (outcome, stats) = run_with(ADVERSARY, &behaviour("memory-bomb"), &limits).await;
    let cause = expect_failure(&outcome, outcome::OUT_OF_MEMORY);
    assert!(cause.contains(&(32u64 << 20).to_string()), "{cause}");
    assert!(
        stats.peak_memory <= 32 << 20,
        "peak {} over the cap",
        stats.peak_memory
    );
    assert_next_task_runs().await;
}

#[tokio::test]
async fn stdout_flood_is_bounded_and_the_task_succeeds() {
    let input = json!({"behaviour": "stdout-flood", "bytes": 20 << 20}).to_string();
    let (outcome, stats) = run_with(ADVERSARY, &input, &limits()).await;
    expect_success(&outcome);
    assert!(
        stats.stdout_tail.contains("adversary: flood done"),
        "tail lost"
    );
    assert!(stats.stdout_tail.contains("earlier bytes dropped"));
    assert!(
        stats.stdout_tail.len() < 16 * 1024,
        "tail not bounded: {}",
        stats.stdout_tail.len()
    );
    assert!(stats.stderr_tail.contains("stderr still works"));
    assert_next_task_runs().await;
}

#[tokio::test]
async fn guest_cannot_read_host_files_env_or_dirs() {
    std::env::set_var("SFN_WASM_WORKER_TEST_SECRET", "hunter2");
    let output = expect_success(
        &run(
            ADVERSARY,
            &json!({"behaviour": "escape", "path": "/etc/passwd"}).to_string(),
        )
        .await,
    );
    assert!(
        output["file"]["Err"].is_string(),
        "file was readable: {output}"
    );
    assert!(
        output["root_dir"]["Err"].is_string(),
        "root dir was listable: {output}"
    );
    assert_eq!(output["env"], json!([]), "environment leaked");
    assert_eq!(output["args"], json!([]));
}

#[tokio::test]
async fn granted_env_and_read_only_dir_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.txt"), "granted text").unwrap();
    let grants = Grants {
        wasi: WasiGrant {
            env: vec![("REGION".into(), "eu-west-1".into())],
            read_only_dirs: vec![(dir.path().to_path_buf(), "/data".into())],
        },
        ..Grants::default()
    };
    let (read_file, _) =
        task(&json!({"behaviour": "read-file", "path": "/data/input.txt"}).to_string());
    let (end, _) = guest(ADVERSARY).run(read_file, &limits(), &grants).await;
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    assert_eq!(expect_success(&outcome), json!({"text": "granted text"}));

    let (escape, _) = task(&behaviour("escape"));
    let (end, _) = guest(ADVERSARY).run(escape, &limits(), &grants).await;
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    assert_eq!(
        expect_success(&outcome)["env"],
        json!([["REGION", "eu-west-1"]])
    );
}

#[tokio::test]
async fn heartbeat_import_is_callable_and_counted() {
    let (task, heartbeat) = task(&json!({"behaviour": "heartbeat", "count": 3}).to_string());
    let (end, stats) = guest(ADVERSARY)
        .run(task, &limits(), &Grants::default())
        .await;
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    assert_eq!(expect_success(&outcome), json!({"ok": 3, "error": null}));
    assert_eq!(heartbeat.count(), 3);
    assert_eq!(stats.usage.host.heartbeats, 3);
}

#[tokio::test]
async fn guest_sees_its_context_but_not_the_token() {
    let output = expect_success(&run(ADVERSARY, &behaviour("context")).await);
    assert_eq!(
        output["activity_arn"],
        "arn:aws:states:us-east-1:123456789012:activity:tests"
    );
    assert_eq!(output["worker_name"], "test-worker");
    assert_eq!(
        output["task_id"],
        sfn_wasm_worker::worker::sfn::task_id("token")
    );
    assert_ne!(output["task_id"], "token");
    // What is left of the 20 s timeout once the instance is ready: never more.
    let left = output["deadline_ms"].as_u64().unwrap();
    assert!((19_000..20_000).contains(&left), "{left}");
}

/// `deadline-ms` is the time left when `handle` is called: a guest that first waited for a
/// CPU turn (its activity's one core held by a guest that spins) sees less than its timeout,
/// by about the time it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_ms_is_the_time_left_after_waiting_for_a_cpu_turn() {
    let grants = Grants {
        cpu: CpuShare::cores(1),
        ..Grants::default()
    };
    let spin_limits = TaskLimits {
        timeout: Duration::from_secs(2),
        ..limits()
    };
    let spinner = {
        let grants = grants.clone();
        tokio::spawn(async move {
            let (task, _) = task(&behaviour("loop"));
            guest(ADVERSARY).run(task, &spin_limits, &grants).await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // long-running: it holds the core
    let started = Instant::now();
    let (task, _) = task(&behaviour("context"));
    let (end, _) = guest(ADVERSARY).run(task, &limits(), &grants).await;
    let waited_at_most = started.elapsed();
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    let left = expect_success(&outcome)["deadline_ms"].as_u64().unwrap();
    let timeout_ms = limits().timeout.as_millis() as u64;
    assert!(
        left < timeout_ms,
        "the whole timeout ({left} ms) after a wait for a turn"
    );
    assert!(
        left + waited_at_most.as_millis() as u64 >= timeout_ms - 1,
        "{left} ms left after at most {waited_at_most:?}"
    );
    spinner.await.unwrap();
}

#[tokio::test]
async fn log_import_accepts_every_level() {
    let output = expect_success(&run(ADVERSARY, &behaviour("log")).await);
    assert_eq!(output, json!({"logged": 5}));
}

/// Runs `input` on the adversary, interrupts it for `reason` after 200 ms, returns how it ended.
async fn run_and_interrupt(input: &str, reason: InterruptReason) -> TaskEnd {
    let (task, _) = task(input);
    let interrupt = task.interrupt.clone();
    let running = tokio::spawn(async move {
        guest(ADVERSARY)
            .run(task, &limits(), &Grants::default())
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    interrupt.trigger(reason);
    let (end, _) = tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("the interrupted guest did not stop within 2 s")
        .unwrap();
    end
}

#[tokio::test]
async fn interrupt_for_shutdown_reports_a_retryable_failure() {
    let end = run_and_interrupt(&behaviour("loop"), InterruptReason::ShuttingDown).await;
    let TaskEnd::Report(outcome) = end else {
        panic!("abandoned")
    };
    expect_failure(&outcome, outcome::SHUTTING_DOWN);
}

#[tokio::test]
async fn interrupt_for_a_gone_task_reports_nothing() {
    let sleeping = json!({"behaviour": "sleep", "ms": 60_000}).to_string();
    let end = run_and_interrupt(
        &sleeping,
        InterruptReason::TaskGone("TaskTimedOut on heartbeat".into()),
    )
    .await;
    assert_eq!(end, TaskEnd::Abandoned("TaskTimedOut on heartbeat".into()));
}

#[tokio::test]
async fn each_task_gets_a_fresh_instance() {
    // Many tasks in a row on one component, interleaved with failures: no state carries over.
    for round in 0..20 {
        let input = json!({"behaviour": "echo", "round": round}).to_string();
        assert_eq!(
            expect_success(&run(ADVERSARY, &input).await)["round"],
            round
        );
        if round % 5 == 0 {
            expect_failure(&run(ADVERSARY, &behaviour("panic")).await, outcome::TRAP);
        }
    }
}

#[test]
fn identical_components_are_loaded_once() {
    let runtime = Runtime::new(&EngineSettings {
        max_concurrent_tasks: 2,
        max_memory_bytes: 64 << 20,
        cache: CacheSetting::Directory(cache_dir()),
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let original = guest_path("rust-order");
    let copy = dir.path().join("tenant-b.wasm");
    std::fs::copy(&original, &copy).unwrap();
    runtime.load(&original).unwrap();
    runtime.load(&copy).unwrap();
    assert_eq!(runtime.loaded_components(), 1);
    runtime.load(&guest_path(ADVERSARY)).unwrap();
    assert_eq!(runtime.loaded_components(), 2);
}
