//! An activity's instances (README "Instances: fresh, ready, warm"): a warm instance keeps
//! its guest's state for up to `instance_reuse` tasks of its activity and never for another
//! activity's; it is dropped after every kind of failure, when idle too long and when its
//! spec is retired; each task still has its own deadline, identity and output tails; a
//! ready instance is fresh, made before its task arrives.

mod common;

use common::*;
use serde_json::{json, Value};
use sfn_wasm_worker::sandbox::cpu_share::CpuShare;
use sfn_wasm_worker::sandbox::host_api::InterruptReason;
use sfn_wasm_worker::sandbox::instances::InstanceSource;
use sfn_wasm_worker::sandbox::outcome::{OUT_OF_MEMORY, TIMEOUT, TRAP};
use sfn_wasm_worker::sandbox::{
    Grants, InstancePolicy, Instances, Outcome, TaskEnd, TaskHandler, TaskLimits, TaskStats,
};
use std::time::{Duration, Instant};

const ADVERSARY: &str = "adversary";

/// Instances of the adversary for the activity `name`, kept as `policy` says.
fn instances(name: &str, policy: InstancePolicy, limits: &TaskLimits) -> Instances {
    Instances::new(
        guest(ADVERSARY),
        format!("arn:aws:states:us-east-1:123456789012:activity:{name}").into(),
        limits.clone(),
        Grants::default(),
        policy,
    )
}

/// Reuse up to `reuse` tasks, no ready instance.
fn reuse(reuse: u32) -> InstancePolicy {
    InstancePolicy {
        reuse,
        ready: 0,
        ..InstancePolicy::default()
    }
}

async fn run_on(instances: &Instances, input: Value, limits: &TaskLimits) -> (Outcome, TaskStats) {
    let (task, _) = task(&input.to_string());
    match instances.run(task, limits, &Grants::default()).await {
        (TaskEnd::Report(outcome), stats) => (outcome, stats),
        (TaskEnd::Abandoned(why), _) => panic!("abandoned: {why}"),
    }
}

/// The `count` behaviour's count: how many tasks its instance has run.
async fn count(instances: &Instances) -> u64 {
    let (outcome, _) = run_on(instances, json!({"behaviour": "count"}), &limits()).await;
    expect_success(&outcome)["count"].as_u64().unwrap()
}

#[tokio::test]
async fn a_warm_instance_keeps_its_state_for_up_to_n_tasks_then_a_fresh_one_starts() {
    let warm = instances("reuse-3", reuse(3), &limits());
    let mut counts = Vec::new();
    for _ in 0..7 {
        counts.push(count(&warm).await);
    }
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);
    let fresh = instances("reuse-1", reuse(1), &limits());
    for _ in 0..3 {
        assert_eq!(
            count(&fresh).await,
            1,
            "instance_reuse = 1 reused an instance"
        );
    }
}

#[tokio::test]
async fn activities_never_share_an_instance_even_of_the_same_component() {
    let (a, b) = (
        instances("tenant-a", reuse(10), &limits()),
        instances("tenant-b", reuse(10), &limits()),
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push((count(&a).await, count(&b).await));
    }
    assert_eq!(seen, [(1, 1), (2, 2), (3, 3)]);
}

#[tokio::test]
async fn a_returned_error_keeps_the_instance_but_every_failure_drops_it() {
    let short = TaskLimits {
        timeout: Duration::from_secs(2),
        memory_limit: 64 << 20,
    };
    let failures = [
        (json!({"behaviour": "panic"}), TRAP),
        (json!({"behaviour": "recursion"}), TRAP),
        (json!({"behaviour": "loop"}), TIMEOUT),
        (json!({"behaviour": "sleep", "ms": 10_000}), TIMEOUT),
        (json!({"behaviour": "memory-bomb"}), OUT_OF_MEMORY),
    ];
    for (input, error) in failures {
        let warm = instances("failures", reuse(100), &short);
        assert_eq!(count(&warm).await, 1);
        assert_eq!(count(&warm).await, 2);
        let (outcome, _) = run_on(&warm, json!({"behaviour": "fail"}), &short).await;
        expect_failure(&outcome, "Test.Failure");
        assert_eq!(
            count(&warm).await,
            3,
            "a returned error spoiled the instance"
        );
        let (outcome, _) = run_on(&warm, input.clone(), &short).await;
        expect_failure(&outcome, error);
        assert_eq!(count(&warm).await, 1, "the instance was kept after {input}");
    }
}

#[tokio::test]
async fn an_interrupted_task_drops_its_instance() {
    for reason in [
        InterruptReason::ShuttingDown,
        InterruptReason::TaskGone("closed".into()),
    ] {
        let warm = instances("interrupted", reuse(100), &limits());
        assert_eq!(count(&warm).await, 1);
        let (task, _) = task(&json!({"behaviour": "loop"}).to_string());
        let interrupt = task.interrupt.clone();
        let limits = limits();
        let grants = Grants::default();
        let running = warm.run(task, &limits, &grants);
        tokio::pin!(running);
        tokio::select! {
            _ = &mut running => panic!("a spinning guest returned"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => interrupt.trigger(reason.clone()),
        }
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("the interrupted guest did not stop");
        assert_eq!(
            count(&warm).await,
            1,
            "kept after an interrupt ({reason:?})"
        );
    }
}

#[tokio::test]
async fn each_task_of_a_warm_instance_has_its_own_deadline_identity_and_tails() {
    let limits = TaskLimits {
        timeout: Duration::from_secs(3),
        ..limits()
    };
    let warm = instances("per-task", reuse(10), &limits);
    let (first, first_stats) = run_on(&warm, json!({"behaviour": "count"}), &limits).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (task, _) = task(&json!({"behaviour": "count"}).to_string());
    let (task_id, grants) = (task.task_id.clone(), Grants::default());
    let (TaskEnd::Report(second), second_stats) = warm.run(task, &limits, &grants).await else {
        panic!("abandoned");
    };
    let (first, second) = (expect_success(&first), expect_success(&second));
    assert_eq!(
        (first["count"].as_u64(), second["count"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(second_stats.instance, InstanceSource::Warm);
    assert_eq!(first_stats.instance, InstanceSource::Fresh);
    // The deadline is the second task's own: its full timeout, not what is left of the first's.
    let deadline_ms = second["deadline_ms"].as_u64().unwrap();
    assert!(deadline_ms > 2_500, "the second task saw {deadline_ms} ms");
    assert_eq!(second["task_id"].as_str(), Some(task_id.as_str()));
    // The tails are the task's own.
    assert!(second_stats.stdout_tail.contains("task 2 of this instance"));
    assert!(
        !second_stats.stdout_tail.contains("task 1"),
        "{}",
        second_stats.stdout_tail
    );
    assert!(second_stats.stderr_tail.contains("stderr of task 2"));
    assert!(!second_stats.stderr_tail.contains("task 1"));
    // A warm task pays no instantiation and no drop.
    assert!(second_stats.phases.instantiate.is_zero() && second_stats.phases.drop.is_zero());
    // And the same guest still times out within its own deadline.
    let started = Instant::now();
    let (outcome, _) = run_on(&warm, json!({"behaviour": "loop"}), &limits).await;
    expect_failure(&outcome, TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(2_900));
}

#[tokio::test]
async fn the_memory_limit_applies_to_a_warm_instance_over_its_life() {
    let limits = TaskLimits {
        memory_limit: 16 << 20,
        ..limits()
    };
    let warm = instances("memory-over-life", reuse(100), &limits);
    let hold = json!({"behaviour": "hold", "mib": 6});
    let mut held = Vec::new();
    let failed = loop {
        let (outcome, _) = run_on(&warm, hold.clone(), &limits).await;
        match outcome {
            Outcome::Succeeded { output } => {
                held.push(serde_json::from_str::<Value>(&output).unwrap()["held_mib"].clone())
            }
            failed => break failed,
        }
        assert!(held.len() < 10, "16 MiB held 60 MiB: {held:?}");
    };
    assert_eq!(
        held,
        [json!(6), json!(12)],
        "each task added to what the instance holds"
    );
    expect_failure(&failed, OUT_OF_MEMORY);
    // Dropped after running out: the next task starts fresh, holding nothing.
    let (outcome, _) = run_on(&warm, json!({"behaviour": "count"}), &limits).await;
    let output = expect_success(&outcome);
    assert_eq!(
        (output["count"].as_u64(), output["held_mib"].as_u64()),
        (Some(1), Some(0))
    );
}

#[tokio::test]
async fn a_warm_instance_idle_past_its_timeout_is_dropped() {
    let warm = instances(
        "idle",
        InstancePolicy {
            idle_timeout: Duration::from_millis(300),
            ..reuse(100)
        },
        &limits(),
    );
    assert_eq!(count(&warm).await, 1);
    assert_eq!(count(&warm).await, 2);
    assert_eq!(warm.kept().1, 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(warm.kept().1, 0, "an idle instance outlived its timeout");
    assert_eq!(count(&warm).await, 1);
}

#[tokio::test]
async fn a_retired_spec_keeps_nothing() {
    let warm = instances("retired", reuse(100), &limits());
    assert_eq!(count(&warm).await, 1);
    warm.retire();
    assert_eq!(warm.kept(), (0, 0));
    assert_eq!(count(&warm).await, 1);
    assert_eq!(warm.kept(), (0, 0), "a retired spec kept an instance");
}

#[tokio::test]
async fn an_instance_waiting_for_a_task_holds_no_place_in_the_cpu_share() {
    let share = CpuShare::cores(2);
    let grants = Grants {
        cpu: share.clone(),
        ..Grants::default()
    };
    let waiting = Instances::new(
        guest(ADVERSARY),
        "arn:aws:states:us-east-1:123456789012:activity:cpu-share".into(),
        limits(),
        grants.clone(),
        InstancePolicy {
            reuse: 10,
            ..InstancePolicy::default()
        },
    );
    ready_soon(&waiting).await;
    assert_eq!(
        share.guests(),
        (0, 0),
        "a ready instance counts as a running guest"
    );
    // A long-running task (it computes through several epoch ticks), kept warm after it.
    let (task, _) = task(&json!({"behaviour": "spin", "ms": 80}).to_string());
    let (TaskEnd::Report(outcome), _) = waiting.run(task, &limits(), &grants).await else {
        panic!("abandoned");
    };
    expect_success(&outcome);
    assert_eq!(waiting.kept().1, 1, "the instance was not kept warm");
    assert_eq!(
        share.guests(),
        (0, 0),
        "a warm instance between tasks counts as a (long-running) guest"
    );
}

/// Waits until `instances` holds a ready instance.
async fn ready_soon(instances: &Instances) {
    let started = Instant::now();
    while instances.kept().0 == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no ready instance was made"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_ready_instance_is_fresh_and_made_before_its_task() {
    let ready = instances("ready", InstancePolicy::default(), &limits());
    for _ in 0..3 {
        ready_soon(&ready).await;
        let (outcome, stats) = run_on(&ready, json!({"behaviour": "count"}), &limits()).await;
        assert_eq!(stats.instance, InstanceSource::Ready);
        assert_eq!(
            expect_success(&outcome)["count"].as_u64(),
            Some(1),
            "a ready instance had run a task before"
        );
        assert!(stats.phases.instantiate.is_zero(), "{:?}", stats.phases);
        assert!(
            !stats.phases.drop.is_zero(),
            "a fresh instance is dropped after its task"
        );
    }
    // A task arriving before a ready instance exists makes its own.
    let none = instances(
        "not-ready",
        InstancePolicy {
            ready: 0,
            ..InstancePolicy::default()
        },
        &limits(),
    );
    let (_, stats) = run_on(&none, json!({"behaviour": "count"}), &limits()).await;
    assert_eq!(stats.instance, InstanceSource::Fresh);
    assert!(!stats.phases.instantiate.is_zero());
    assert_eq!(none.kept(), (0, 0));
}

#[tokio::test]
async fn a_ready_instance_whose_start_up_fails_is_not_kept_and_the_task_reports_the_trap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("start-traps.wasm");
    std::fs::write(
        &path,
        wat::parse_str(handler_component("unreachable")).unwrap(),
    )
    .unwrap();
    let failing = Instances::new(
        runtime().load(&path).expect("it matches the world"),
        "arn:aws:states:us-east-1:123456789012:activity:start-traps".into(),
        limits(),
        Grants::default(),
        InstancePolicy::default(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        failing.kept(),
        (0, 0),
        "an instance that failed to start was kept"
    );
    let (outcome, stats) = run_on(&failing, json!({}), &limits()).await;
    let cause = expect_failure(&outcome, TRAP);
    assert!(cause.contains("unreachable"), "{cause}");
    assert_eq!(stats.instance, InstanceSource::Fresh);
}
