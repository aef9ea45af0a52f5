//! SIGTERM under load: the worker binary is started, run for a random moment under a steady
//! stream of tasks that sleep (some longer than the drain timeout, some far longer than the
//! exit bound), compute without calling the host (forever, until stopped), compute while
//! reading the clock, allocate to the memory limit and trap, sent SIGTERM, and started
//! again, 50 times. Every task Step Functions handed out must be reported exactly once with
//! an outcome its behaviour allows (`Worker.ShuttingDown` for those the drain timeout cut);
//! every exit must be 0 and come within `drain_timeout` plus the open poll's remaining time
//! plus a start-up and exit slack. Prints the counts and the slowest exit. `SIGNALS_SEED=N`
//! replays a run's moments.
//!
//! And one spinning guest at a time: SIGTERM stops it at the drain timeout (also right after
//! a reload), and its own timeout still stops it during a drain.

mod common;

use common::*;
use serde_json::json;
use sfn_fake::{FakeSfn, SplitMix64, TaskState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const RESTARTS: usize = 50;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the fake holds an empty poll (the most an open poll can still take).
const POLL_HOLD: Duration = Duration::from_millis(200);
/// Process start-up and exit on a busy 2-core machine, on top of the two above: an exit
/// that honours the drain timeout comes 1.0–1.3 s after the signal on an idle machine, and
/// the slack leaves 2.5 s more for a slow, loaded one. The bound stays below what a drain
/// that ignored its timeout would take: a long sleeper (see `LONG_SLEEP_MS`) would then
/// still be sleeping (checked below, at compile time), and a `loop` guest would run until
/// its 10 s task timeout.
const EXIT_SLACK: Duration = Duration::from_millis(2_500);
/// The longest a worker runs before its SIGTERM (it runs 100 ms to this).
const MAX_RUN_MS: u64 = 1_000;
/// How long the mix's long sleepers sleep: more than the exit bound after the longest run,
/// so that any of them running at the signal (it started at most `MAX_RUN_MS` before)
/// would outlast the bound if the drain timeout did not cut it.
const LONG_SLEEP_MS: (u64, u64) = (6_000, 9_000);
const _: () = assert!(
    (LONG_SLEEP_MS.0 - MAX_RUN_MS) as u128
        > DRAIN_TIMEOUT.as_millis() + POLL_HOLD.as_millis() + EXIT_SLACK.as_millis() + 1_000,
    "a long sleeper must outlast the exit bound by a second"
);

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
    let config = write_signals_config(dir.path(), &fake, &arn, DRAIN_TIMEOUT, "10s", 8);

    // Load: a task every 40 ms, of every kind of behaviour (see `MIX`).
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let stop_load = CancellationToken::new();
    let load = tokio::spawn({
        let (fake, arn, tokens, stop) =
            (fake.clone(), arn.clone(), tokens.clone(), stop_load.clone());
        async move {
            let mut rng = SplitMix64(seed);
            while !stop.is_cancelled() {
                let (input, allowed) = pick(&mut rng);
                let token = fake.enqueue(&arn, &input.to_string());
                tokens.lock().unwrap().push((token, allowed));
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
        tokio::time::sleep(Duration::from_millis(
            100 + rng.next_u64() % (MAX_RUN_MS - 100),
        ))
        .await;
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
    let mut long_sleepers_cut = 0;
    for (token, allowed) in tokens.lock().unwrap().iter() {
        let record = fake.task(token);
        let input: serde_json::Value = serde_json::from_str(&record.input).unwrap();
        let long_sleeper =
            input["behaviour"] == "sleep" && input["ms"].as_u64() >= Some(LONG_SLEEP_MS.0);
        if long_sleeper && record.state != TaskState::Queued {
            long_sleepers_cut += 1; // only `Worker.ShuttingDown` is allowed, checked just below
        }
        let verdict = match &record.state {
            TaskState::Queued => "never handed out".to_string(),
            _ if record.reports != 1 => panic!(
                "seed {seed}: a task ({}) ended {:?} after {} reports",
                record.input, record.state, record.reports
            ),
            TaskState::Succeeded(_) if allowed.contains(&SUCCEEDED) => SUCCEEDED.to_string(),
            TaskState::Failed { error, .. } if allowed.contains(&error.as_str()) => error.clone(),
            other => panic!(
                "seed {seed}: a task ({}) ended {other:?}; allowed: {allowed:?}",
                record.input
            ),
        };
        *counts.entry(verdict).or_default() += 1;
    }
    eprintln!(
        "signals: seed {seed}, {RESTARTS} SIGTERMs under load; tasks {counts:?} \
         ({long_sleepers_cut} long sleepers cut); every exit 0, the slowest {:.2} s after its \
         signal (bound {:.1} s)",
        slowest.as_secs_f64(),
        (DRAIN_TIMEOUT + POLL_HOLD + EXIT_SLACK).as_secs_f64()
    );
    // The exit bound was put to the test: some drains had a task to cut that would have
    // outlasted it (a sleeper only ends early as `Worker.ShuttingDown`).
    assert!(
        long_sleepers_cut > 0,
        "seed {seed}: no long sleeper ran at a signal: {counts:?}"
    );
    for outcome in [SUCCEEDED, SHUTTING_DOWN, "Wasm.OutOfMemory", "Wasm.Trap"] {
        assert!(
            counts.get(outcome).is_some_and(|n| *n > 0),
            "no task {outcome}: {counts:?}"
        );
    }
}

/// How the fake shows a success among the allowed outcomes.
const SUCCEEDED: &str = "succeeded";
const SHUTTING_DOWN: &str = "Worker.ShuttingDown";

/// The `ms` of every task but the long sleepers: 0 to 1.5 s.
const SHORT_MS: (u64, u64) = (0, 1_500);

/// A behaviour of the load: its name, its weight, the range of its `ms`, and the outcomes it
/// may end with.
type Behaviour = (&'static str, u64, (u64, u64), &'static [&'static str]);

/// The load's behaviours.
const MIX: [Behaviour; 6] = [
    ("sleep", 10, SHORT_MS, &[SUCCEEDED, SHUTTING_DOWN]),
    // Sleeps past any worker's life: only the drain timeout ends it.
    ("sleep", 3, LONG_SLEEP_MS, &[SHUTTING_DOWN]),
    // Computes without ever calling the host: only the epoch can stop it.
    ("loop", 1, SHORT_MS, &[SHUTTING_DOWN]),
    // Computes, reading the clock, for up to 1.5 s.
    ("spin", 3, SHORT_MS, &[SUCCEEDED, SHUTTING_DOWN]),
    (
        "memory-bomb",
        1,
        SHORT_MS,
        &[SHUTTING_DOWN, "Wasm.OutOfMemory"],
    ),
    ("panic", 1, SHORT_MS, &[SHUTTING_DOWN, "Wasm.Trap"]),
];

/// One task of the mix: its input and the outcomes it may end with.
fn pick(rng: &mut SplitMix64) -> (serde_json::Value, &'static [&'static str]) {
    let total: u64 = MIX.iter().map(|(_, weight, _, _)| weight).sum();
    let mut draw = rng.next_u64() % total;
    let roll = rng.next_u64();
    for (behaviour, weight, (low, high), allowed) in MIX {
        if draw < weight {
            let ms = low + roll % (high - low);
            return (json!({"behaviour": behaviour, "ms": ms}), allowed);
        }
        draw -= weight;
    }
    unreachable!("the draw is below the total weight")
}

/// Writes a config serving `arn` with the adversary guest; returns its path.
fn write_signals_config(
    dir: &Path,
    fake: &FakeSfn,
    arn: &str,
    drain_timeout: Duration,
    timeout: &str,
    max_concurrency: u32,
) -> PathBuf {
    let config = dir.join("worker.toml");
    write_config(
        &config,
        json!({
            "worker": {
                "name": "signals",
                "region": "us-east-1",
                "endpoint_url": fake.endpoint,
                "drain_timeout": format!("{}ms", drain_timeout.as_millis()),
            },
            "activity": [{
                "arn": arn,
                "component": path_value(&guest_path("adversary")),
                "max_concurrency": max_concurrency,
                "pollers": max_concurrency.min(4),
                "timeout": timeout,
                "memory_limit": "64MiB",
            }],
        }),
    );
    config
}

/// Starts the worker on `config`, hands it one guest that computes forever without calling
/// the host, and waits until the guest runs.
async fn worker_with_a_spinning_guest(
    fake: &FakeSfn,
    arn: &str,
    config: &Path,
) -> (std::process::Child, String) {
    let child = worker_command()
        .args(["run", "--config"])
        .arg(config)
        .env("SFN_WASM_WORKER_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let token = fake.enqueue(arn, &json!({"behaviour": "loop"}).to_string());
    fake.wait_until(
        Duration::from_secs(30),
        "the spinning task to start",
        |fake| fake.task(&token).state == TaskState::Running,
    )
    .await;
    // Past its first epoch ticks: computing, not starting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (child, token)
}

/// SIGTERMs `child`; asserts it exits 0 within `bound`.
async fn terminate_within(child: &mut std::process::Child, bound: Duration) -> Duration {
    let signalled = Instant::now();
    send_signal("TERM", child.id());
    let status = wait_for_exit(child, Duration::from_secs(30)).await;
    let exit = signalled.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        panic!("still running 30 s after SIGTERM while a guest spins (bound {bound:?})");
    };
    assert!(status.success(), "exit {status}");
    assert!(exit <= bound, "exit took {exit:?}, bound {bound:?}");
    exit
}

/// SIGTERMs a worker whose guest computes forever without calling the host, after a reload
/// if `reload_first`; the worker must exit in time and report the task `Worker.ShuttingDown`.
async fn sigterm_stops_a_spinning_guest(name: &str, reload_first: bool) {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(POLL_HOLD);
    let arn = fake.create_activity(name);
    let dir = tempfile::tempdir().unwrap();
    let config = write_signals_config(dir.path(), &fake, &arn, DRAIN_TIMEOUT, "60s", 2);
    let (mut child, token) = worker_with_a_spinning_guest(&fake, &arn, &config).await;
    if reload_first {
        // A reload that changes the activity (its running task keeps the old spec): from 2
        // slots and pollers to 3.
        write_signals_config(dir.path(), &fake, &arn, DRAIN_TIMEOUT, "60s", 3);
        send_signal("HUP", child.id());
        // Applied once 2 polls are open beside the running task: a poll holds a free slot,
        // so with the old 2 slots at most 1 can be (as the other case checks).
        let sent = Instant::now();
        fake.wait_until(Duration::from_secs(60), "the reload to apply", |fake| {
            fake.max_busy(&arn) >= 3
        })
        .await;
        eprintln!("{name}: reload applied {:?} after SIGHUP", sent.elapsed());
    } else {
        assert!(
            fake.max_busy(&arn) <= 2,
            "{} polls and tasks at once with 2 slots",
            fake.max_busy(&arn)
        );
    }
    terminate_within(&mut child, DRAIN_TIMEOUT + POLL_HOLD + EXIT_SLACK).await;
    assert!(
        matches!(fake.task(&token).state, TaskState::Failed { ref error, .. } if error == SHUTTING_DOWN),
        "{:?}",
        fake.task(&token).state
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_spinning_guest_at_the_drain_timeout() {
    sigterm_stops_a_spinning_guest("spinning", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_a_reload_stops_a_spinning_guest_at_the_drain_timeout() {
    sigterm_stops_a_spinning_guest("spinning-reloaded", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guests_timeout_still_stops_it_during_a_drain() {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(POLL_HOLD);
    let arn = fake.create_activity("spinning-timeout");
    let dir = tempfile::tempdir().unwrap();
    // Its timeout ends well before the drain timeout does.
    let drain_timeout = Duration::from_secs(20);
    let guest_timeout = Duration::from_millis(1_500);
    let timeout = format!("{}ms", guest_timeout.as_millis());
    let config = write_signals_config(dir.path(), &fake, &arn, drain_timeout, &timeout, 2);
    let (mut child, token) = worker_with_a_spinning_guest(&fake, &arn, &config).await;
    // The guest's timeout (running since before the signal) ends it within 1.5 s, then the
    // worker exits; were it only the drain timeout, the exit would come after 20 s.
    let bound = guest_timeout + EXIT_SLACK * 2;
    assert!(bound * 2 < drain_timeout);
    let exit = terminate_within(&mut child, bound).await;
    match fake.task(&token).state {
        TaskState::Failed { error, .. } if error == "Wasm.Timeout" => {}
        other => panic!("{other:?} (exit after {exit:?})"),
    }
}
