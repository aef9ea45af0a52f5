//! The task journal (`[worker] journal`) through the Step Functions fake and the worker
//! binary: a SIGKILLed worker's tasks are reported by the next worker on the same journal,
//! within seconds, each exactly once and with the right outcome: a guest still running is
//! failed with `Worker.Restarted`; a guest that had ended has its own outcome reported,
//! whether its report was waiting for its turn or on its way. Also: two workers on one
//! journal, a corrupt one, a foreign file, and tasks that closed in the meantime.

mod common;

use common::*;
use serde_json::json;
use sfn_fake::{FakeSfn, Fault, Op, TaskState};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A worker configuration for the fake's `arn`, keeping its journal in `journal`.
fn config(dir: &Path, fake: &FakeSfn, arn: &str, journal: &Path, concurrency: u32) -> PathBuf {
    let path = dir.join("worker.toml");
    write_config(
        &path,
        json!({
            "worker": {
                "name": "journal-test",
                "region": "us-east-1",
                "endpoint_url": fake.endpoint,
                "drain_timeout": "2s",
                "journal": path_value(journal),
            },
            "activity": [{
                "arn": arn,
                "component": path_value(&guest_path("adversary")),
                "max_concurrency": concurrency,
                "pollers": 1,
                "timeout": "120s",
            }],
        }),
    );
    path
}

/// The journal's records (the space the worker allocated after them reads as NUL bytes).
fn journal_text(journal: &Path) -> String {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    text.trim_end_matches('\0').to_string()
}

/// Records of `kind` in the journal file now.
fn records(journal: &Path, kind: &str) -> usize {
    let text = journal_text(journal);
    let needle = format!("\"record\":\"{kind}\"");
    text.lines().filter(|line| line.contains(&needle)).count()
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_tasks_are_reported_by_the_next_worker() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("journal");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("tasks.journal");
    // Three report permits: the first three reports stall (on their way when the worker
    // dies), so a fourth finished task waits for its turn to report.
    let config = config(dir.path(), &fake, &arn, &journal, 3);
    fake.inject(Op::SendTaskSuccess, Fault::Stall, 3);
    let first = LoggedWorker::start(&config, "sfn_wasm_worker=debug,info");

    let reporting: Vec<String> = (0..3)
        .map(|n| fake.enqueue(&arn, &json!({"behaviour": "echo", "n": n}).to_string()))
        .collect();
    wait_for("three stalled reports", || {
        fake.calls(Op::SendTaskSuccess) == 3
    })
    .await;
    let waiting = fake.enqueue(&arn, &json!({"behaviour": "echo", "n": 3}).to_string());
    let running = fake.enqueue(
        &arn,
        &json!({"behaviour": "sleep", "ms": 60_000}).to_string(),
    );
    // Four outcomes journaled (three on their way, one waiting), the sleeper started.
    wait_for("four outcomes in the journal", || {
        records(&journal, "outcome") == 4 && records(&journal, "started") == 5
    })
    .await;
    assert_eq!(fake.task(&running).state, TaskState::Running);
    let mode = std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the journal holds tokens: mode {mode:o}");
    let first_log = first.kill();

    let restarted = Instant::now();
    let second = LoggedWorker::start(&config, "sfn_wasm_worker=debug,info");
    let mut tokens = reporting.clone();
    tokens.extend([waiting.clone(), running.clone()]);
    for token in &tokens {
        fake.wait_for_result(token, WAIT).await;
    }
    let took = restarted.elapsed();
    for (n, token) in reporting.iter().chain([&waiting]).enumerate() {
        let record = fake.task(token);
        let TaskState::Succeeded(output) = &record.state else {
            panic!("task {n}: {:?}", record.state);
        };
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(output).unwrap()["n"],
            n
        );
        assert_eq!(
            record.reports, 1,
            "task {n} was reported {} times",
            record.reports
        );
    }
    let record = fake.task(&running);
    let TaskState::Failed { error, cause } = &record.state else {
        panic!("the running task: {:?}", record.state);
    };
    assert_eq!(error, "Worker.Restarted");
    assert!(cause.contains("journal-test"), "{cause}");
    assert_eq!(record.reports, 1);
    println!("after the restart, all five tasks were reported within {took:?}");
    assert!(took < Duration::from_secs(10), "the replay took {took:?}");

    // Nothing new runs twice; the drained worker leaves a journal with no open entry.
    let later = fake.enqueue(&arn, &json!({"behaviour": "echo"}).to_string());
    fake.wait_for_result(&later, WAIT).await;
    let second_log = second.stop();
    let text = journal_text(&journal);
    assert_eq!(text.lines().count(), 1, "left after a drain:\n{text}");
    for token in tokens.iter().chain([&later]) {
        assert!(
            !first_log.contains(token.as_str()) && !second_log.contains(token.as_str()),
            "a token was logged"
        );
    }
    assert!(second_log.contains("replaying"), "{second_log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_the_same_journal_is_refused() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("journal-lock");
    let dir = tempfile::tempdir().unwrap();
    // A directory: the journal is a file in it.
    let config = config(dir.path(), &fake, &arn, dir.path(), 1);
    let first = LoggedWorker::start(&config, "info");
    wait_for("the first worker to poll", || fake.open_polls(&arn) == 1).await;
    let stderr_path = dir.path().join("second.log");
    let mut second = worker_command()
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for_exit(&mut second, WAIT).await;
    if status.is_none() {
        second.kill().unwrap();
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(
        stderr.contains("in use by another worker") && stderr.contains("tasks.journal"),
        "{stderr}"
    );
    first.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_lines_are_skipped_and_a_foreign_file_is_moved_aside() {
    let fake = FakeSfn::start().await;
    let arn = fake.create_activity("journal-corrupt");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("tasks.journal");
    let config = config(dir.path(), &fake, &arn, &journal, 2);

    // A killed worker leaves two running tasks; one closes in the meantime (as Step
    // Functions closes a timed-out state); then lines are torn and garbled.
    let first = LoggedWorker::start(&config, "info");
    let sleep = json!({"behaviour": "sleep", "ms": 60_000}).to_string();
    let (kept, closed) = (fake.enqueue(&arn, &sleep), fake.enqueue(&arn, &sleep));
    wait_for("two tasks journaled", || records(&journal, "started") == 2).await;
    first.kill();
    fake.close(&closed);
    let mut text = journal_text(&journal);
    text.push_str(
        "0badc0de {\"record\":\"done\",\"id\":0}\nnot a record\n12345678 {\"record\":\"do",
    );
    std::fs::write(&journal, text).unwrap();

    let second = LoggedWorker::start(&config, "info");
    let TaskState::Failed { error, .. } = fake.wait_for_result(&kept, WAIT).await else {
        panic!("{:?}", fake.task(&kept).state);
    };
    assert_eq!(error, "Worker.Restarted");
    let echo = fake.enqueue(&arn, &json!({"behaviour": "echo"}).to_string());
    assert!(matches!(
        fake.wait_for_result(&echo, WAIT).await,
        TaskState::Succeeded(_)
    ));
    let log = second.stop();
    assert_eq!(log.matches("skipped a journal line").count(), 3, "{log}");
    for why in ["checksum mismatch", "bad checksum", "truncated"] {
        assert!(log.contains(why), "no {why:?} in:\n{log}");
    }
    assert_eq!(fake.task(&closed).state, TaskState::Closed);
    assert!(!log.contains("ERROR"), "a closed task is no error:\n{log}");

    // A file that is not a journal: moved aside, the worker serves with a new journal.
    std::fs::write(&journal, "hello\n").unwrap();
    let third = LoggedWorker::start(&config, "info");
    let echo = fake.enqueue(&arn, &json!({"behaviour": "echo"}).to_string());
    assert!(matches!(
        fake.wait_for_result(&echo, WAIT).await,
        TaskState::Succeeded(_)
    ));
    let log = third.stop();
    assert!(log.contains("is not one"), "{log}");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tasks.journal.foreign-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
        "hello\n"
    );
}
