//! Section 9: the CPU share decides as a fair scheduler does. Through the fake, with this
//! process's worker (its runtime has the worker binary's threads): one compute-bound
//! activity alone under the default settings and under `max_cores` caps; two compute-bound
//! activities side by side; and a small activity's task latency (its polls, its guest and
//! its report) beside a compute-bound flood.

use crate::report::{percentiles, Table};
use crate::timed::process_cpu_time;
use crate::{guest_path, serve_in_process, wait_until_ended, ORDER};
use anyhow::{bail, Result};
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::units::HumanDuration;
use sfn_wasm_worker::config::ActivityConfig;
use sfn_wasm_worker::sandbox::cpu_share::cores;
use sfn_wasm_worker::sandbox::Runtime;
use std::time::{Duration, Instant};

/// One compute task: a fixed amount of work (about 200 ms of one core here).
const WORK: &str = r#"{"behaviour":"work","iterations":100000000}"#;
/// A shorter one, for the side-by-side windows (about 45 ms).
const SHORT_WORK: &str = r#"{"behaviour":"work","iterations":20000000}"#;

/// Section 9: the CPU share alone, side by side and beside a small activity (`tasks`
/// compute tasks for the lone runs, `window` for the others).
pub(crate) async fn cpu_share(runtime: &Runtime, tasks: usize, window: Duration) -> Result<()> {
    let cores = cores() as u32;
    let mut alone = Table::new(
        &format!(
            "9a. One compute-bound activity alone: {tasks} tasks of ~200 ms of work, \
             max_concurrency 4, on {cores} cores"
        ),
        &[
            "[activity.cpu]",
            "wall s",
            "tasks/s",
            "cores used",
            "vs max_cores = cores",
        ],
    );
    let mut settings = vec![("default (no cap)".to_string(), None)];
    settings.push((format!("max_cores = {cores}"), Some(cores)));
    if cores > 1 {
        settings.push((
            format!("max_cores = {} (the old default)", cores - 1),
            Some(cores - 1),
        ));
    }
    let mut runs = Vec::new();
    for (name, max_cores) in &settings {
        runs.push((name, lone_run(runtime, tasks, *max_cores).await?));
    }
    let all_cores = runs[1].1 .0;
    for (name, (wall, cpu)) in &runs {
        alone.row(vec![
            name.to_string(),
            format!("{:.2}", wall.as_secs_f64()),
            format!("{:.1}", tasks as f64 / wall.as_secs_f64()),
            format!("{:.2}", cpu.as_secs_f64() / wall.as_secs_f64()),
            format!("{:.3} ×", wall.as_secs_f64() / all_cores.as_secs_f64()),
        ]);
    }
    alone.print();
    println!(
        "   target: the default within 5 % of max_cores = cores: {:+.1} %",
        (runs[0].1 .0.as_secs_f64() / all_cores.as_secs_f64() - 1.0) * 100.0
    );

    let (first, second) = side_by_side(runtime, window).await?;
    let mut shared = Table::new(
        &format!(
            "9b. Two compute-bound activities side by side, each kept flooded with ~45 ms \
             tasks ({} s)",
            window.as_secs()
        ),
        &["activity", "tasks done", "share of the work"],
    );
    for (name, done) in [("first", first), ("second", second)] {
        shared.row(vec![
            name.to_string(),
            done.to_string(),
            format!(
                "{:.0} %",
                100.0 * done as f64 / (first + second).max(1) as f64
            ),
        ]);
    }
    shared.print();

    let quiet = small_activity_latency(runtime, false, window).await?;
    let busy = small_activity_latency(runtime, true, window).await?;
    let mut latency = Table::new(
        &format!(
            "9c. A small activity (Rust order guest, 100 tasks/s; queued → reported, so its \
             polls and reports included) alone and beside a compute-bound flood ({} s each)",
            window.as_secs()
        ),
        &["beside", "tasks", "p50 ms", "p99 ms"],
    );
    for (name, (count, p50, p99)) in [("nothing", quiet), ("a compute flood", busy)] {
        latency.row(vec![
            name.to_string(),
            count.to_string(),
            format!("{:.2}", p50.as_secs_f64() * 1e3),
            format!("{:.2}", p99.as_secs_f64() * 1e3),
        ]);
    }
    latency.print();
    println!(
        "   target: p99 beside the flood ≤ 2 × alone: {:.1} ×",
        busy.2.as_secs_f64() / quiet.2.as_secs_f64()
    );
    Ok(())
}

/// A compute-bound activity (the adversary guest, 4 slots) with `max_cores`.
fn compute_activity(arn: &str, max_cores: Option<u32>) -> Result<ActivityConfig> {
    let mut activity = ActivityConfig::new(arn.to_string(), guest_path("adversary")?);
    activity.max_concurrency = 4;
    activity.pollers = 2;
    activity.timeout = Some(HumanDuration(Duration::from_secs(60)));
    activity.capabilities.cpu.max_cores = max_cores;
    Ok(activity)
}

/// Waits until every task of `tokens` has ended, each successfully.
async fn all_succeed(fake: &FakeSfn, tokens: &[String]) -> Result<()> {
    wait_until_ended(fake, tokens, Duration::from_secs(600)).await?;
    for token in tokens {
        if !matches!(fake.task(token).state, TaskState::Succeeded(_)) {
            bail!("a task ended {:?}", fake.task(token).state);
        }
    }
    Ok(())
}

/// `tasks` compute tasks queued at once for one activity (its worker started and polling):
/// the time to the last report, and the process's CPU time over it.
async fn lone_run(
    runtime: &Runtime,
    tasks: usize,
    max_cores: Option<u32>,
) -> Result<(Duration, Duration)> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    let arn = fake.create_activity("compute");
    let (shutdown, running) = serve_in_process(
        runtime,
        &fake,
        "cpu-share",
        vec![compute_activity(&arn, max_cores)?],
    )
    .await?;
    // The component loaded and its polls open before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu, started) = (process_cpu_time(), Instant::now());
    let tokens: Vec<String> = (0..tasks).map(|_| fake.enqueue(&arn, WORK)).collect();
    all_succeed(&fake, &tokens).await?;
    let (wall, cpu) = (started.elapsed(), process_cpu_time() - cpu);
    shutdown.cancel();
    running.await??;
    Ok((wall, cpu))
}

/// Keeps `arn` with 8 tasks of `input` queued or running; the tokens so far.
fn top_up(fake: &FakeSfn, arn: &str, input: &str, tokens: &mut Vec<String>) {
    let open = tokens
        .iter()
        .filter(|token| fake.task(token.as_str()).ended_at.is_none())
        .count();
    for _ in open..8 {
        tokens.push(fake.enqueue(arn, input));
    }
}

/// The tasks each of two flooded compute-bound activities finished within `window`.
async fn side_by_side(runtime: &Runtime, window: Duration) -> Result<(usize, usize)> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    let (first, second) = (
        fake.create_activity("first"),
        fake.create_activity("second"),
    );
    let activities = vec![
        compute_activity(&first, None)?,
        compute_activity(&second, None)?,
    ];
    let (shutdown, running) = serve_in_process(runtime, &fake, "cpu-share", activities).await?;
    let (mut first_tokens, mut second_tokens) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let window_end = started + window;
    while Instant::now() < window_end {
        top_up(&fake, &first, SHORT_WORK, &mut first_tokens);
        top_up(&fake, &second, SHORT_WORK, &mut second_tokens);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done_in_window = |tokens: &[String]| {
        tokens
            .iter()
            .filter(|token| {
                let record = fake.task(token);
                matches!(record.state, TaskState::Succeeded(_))
                    && record.ended_at.is_some_and(|ended| ended <= window_end)
            })
            .count()
    };
    let counts = (
        done_in_window(&first_tokens),
        done_in_window(&second_tokens),
    );
    shutdown.cancel();
    running.await??;
    Ok(counts)
}

/// The Rust order guest's tasks at 100 per second over `window`, beside a compute-bound
/// activity kept flooded if `flood`: how many, and their p50 and p99 from queued to reported.
async fn small_activity_latency(
    runtime: &Runtime,
    flood: bool,
    window: Duration,
) -> Result<(usize, Duration, Duration)> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    let (small, compute) = (
        fake.create_activity("small"),
        fake.create_activity("compute"),
    );
    let mut order = ActivityConfig::new(small.clone(), guest_path("rust-order")?);
    order.max_concurrency = 4;
    order.pollers = 2;
    let activities = vec![order, compute_activity(&compute, None)?];
    let (shutdown, running) = serve_in_process(runtime, &fake, "cpu-share", activities).await?;
    let (mut small_tokens, mut compute_tokens) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while started.elapsed() < window {
        small_tokens.push(fake.enqueue(&small, ORDER));
        if flood {
            top_up(&fake, &compute, WORK, &mut compute_tokens);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    all_succeed(&fake, &small_tokens).await?;
    shutdown.cancel();
    running.await??;
    let mut latencies: Vec<Duration> = small_tokens
        .iter()
        .map(|token| {
            let record = fake.task(token);
            record.ended_at.unwrap() - record.queued_at
        })
        .collect();
    let (p50, p99) = percentiles(&mut latencies);
    Ok((small_tokens.len(), p50, p99))
}
