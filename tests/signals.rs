//! SIGTERM under load: the worker binary is started, run for a random moment under a steady
//! stream of tasks (some longer than the drain timeout), sent SIGTERM, and started again,
//! 50 times. Every task Step Functions handed out must be reported exactly once: succeeded,
//! or failed with `Worker.ShuttingDown` (those the drain timeout cut); every exit must be 0
//! and come within `drain_timeout` plus the open poll's remaining time. Prints the counts
//! and the slowest exit. `SIGNALS_SEED=N` replays a run's moments.

mod common;

use common::*;
use serde_json::json;
use sfn_fake::{FakeSfn, SplitMix64, TaskState};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const RESTARTS: usize = 50;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the fake holds an empty poll (the most an open poll can still take).
const POLL_HOLD: Duration = Duration::from_millis(200);
/// Process start-up and exit on a busy 2-core machine, on top of the two above.
const EXIT_SLACK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_50_times_loses_nothing() {
    let seed = std::env::var("SIGNALS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(20_261_127u64);
    let fake = Arc::new(FakeSfn::start().await);
    fake.set_poll_hold(POLL_HOLD);
    let arn = fake.create_activity("signals");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[worker]\nname = \"signals\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\
             drain_timeout = \"{}ms\"\n\n[[activity]]\narn = \"{arn}\"\ncomponent = \"{}\"\n\
             max_concurrency = 8\npollers = 4\ntimeout = \"10s\"\n",
            fake.endpoint,
            DRAIN_TIMEOUT.as_millis(),
            guest_path("adversary").display()
        ),
    )
    .unwrap();

    // Load: a task every 40 ms sleeping 0–1.5 s (the longest outlast the drain timeout).
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let stop_load = CancellationToken::new();
    let load = tokio::spawn({
        let (fake, arn, tokens, stop) =
            (fake.clone(), arn.clone(), tokens.clone(), stop_load.clone());
        async move {
            let mut rng = SplitMix64(seed);
            while !stop.is_cancelled() {
                let ms = rng.next_u64() % 1_500;
                let token =
                    fake.enqueue(&arn, &json!({"behaviour": "sleep", "ms": ms}).to_string());
                tokens.lock().unwrap().push(token);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    });

    let mut rng = SplitMix64(seed ^ 0x5167);
    let mut slowest = Duration::ZERO;
    for restart in 0..RESTARTS {
        let mut child = worker_command()
            .args(["run", "--config"])
            .arg(&config)
            .env("SFN_WASM_WORKER_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100 + rng.next_u64() % 900)).await;
        let signalled = Instant::now();
        send_signal("TERM", child.id());
        let status = wait_for_exit(&mut child, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("restart {restart}: still running 30 s after SIGTERM"));
        let exit = signalled.elapsed();
        slowest = slowest.max(exit);
        assert!(
            status.success(),
            "restart {restart} (seed {seed}): exit {status}"
        );
        assert!(
            exit <= DRAIN_TIMEOUT + POLL_HOLD + EXIT_SLACK,
            "restart {restart} (seed {seed}): exit took {exit:?}"
        );
    }
    stop_load.cancel();
    load.await.unwrap();

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for token in tokens.lock().unwrap().iter() {
        let record = fake.task(token);
        let verdict = match &record.state {
            TaskState::Queued => "never handed out".to_string(),
            TaskState::Succeeded(_) if record.reports == 1 => "succeeded".to_string(),
            TaskState::Failed { error, .. }
                if error == "Worker.ShuttingDown" && record.reports == 1 =>
            {
                "failed with Worker.ShuttingDown".to_string()
            }
            other => panic!(
                "seed {seed}: a task ended {other:?} after {} reports",
                record.reports
            ),
        };
        *counts.entry(verdict).or_default() += 1;
    }
    eprintln!(
        "signals: seed {seed}, {RESTARTS} SIGTERMs under load; tasks {counts:?}; every exit 0, \
         the slowest {:.2} s after its signal (bound {:.1} s)",
        slowest.as_secs_f64(),
        (DRAIN_TIMEOUT + POLL_HOLD + EXIT_SLACK).as_secs_f64()
    );
    assert!(
        counts.get("succeeded").is_some_and(|n| *n > 0),
        "{counts:?}"
    );
}
