//! Section 8: hostile neighbours. Two activities in one worker on this machine's cores: A
//! runs the Rust order guest at a steady 100 tasks/s; B is kept flooded with guests that spin
//! until their deadline, grow memory to the cap, recurse, write 100 MB to stdout and return
//! oversized output. A's latency (queued → reported, through the fake) alone and next to B.

use crate::memory::rss_bytes;
use crate::report::{mib, percentiles, Table};
use crate::{guest_path, serve_in_process, wait_until_ended, ORDER};
use anyhow::{bail, Result};
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::units::{ByteSize, HumanDuration};
use sfn_wasm_worker::config::ActivityConfig;
use sfn_wasm_worker::sandbox::Runtime;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What B's guests do, in turn, and the error each must end with.
const HOSTILE: [(&str, &str); 5] = [
    (r#"{"behaviour":"loop"}"#, "Wasm.Timeout"),
    (r#"{"behaviour":"memory-bomb"}"#, "Wasm.OutOfMemory"),
    (r#"{"behaviour":"recursion"}"#, "Wasm.Trap"),
    (
        r#"{"behaviour":"stdout-flood","bytes":104857600}"#,
        "(succeeds, output bounded)",
    ),
    (
        r#"{"behaviour":"huge-output","bytes":1000000}"#,
        "Worker.OutputTooLarge",
    ),
];
/// B's tasks kept queued or running at once.
const FLOOD_DEPTH: usize = 16;

/// What one window measured.
struct Window {
    a_tasks: usize,
    a_p50: Duration,
    a_p99: Duration,
    b_ended: BTreeMap<String, usize>,
    b_wrong: usize,
    rss_peak: u64,
}

/// 8. A's latency alone and with B flooded, over `window` each.
pub(crate) async fn neighbours(runtime: &Runtime, window: Duration) -> Result<()> {
    let alone = measure(runtime, false, None, window).await?;
    let flooded = measure(runtime, true, None, window).await?;
    let capped = measure(runtime, true, Some(1), window).await?;
    let mut table = Table::new(
        &format!(
            "8. Hostile neighbours: A (Rust order guest, 100 tasks/s) alone and beside B \
             flooded with hostile guests ({} s each)",
            window.as_secs()
        ),
        &[
            "A's neighbour",
            "A tasks",
            "A p50 ms",
            "A p99 ms",
            "B tasks ended",
            "B wrong outcomes",
            "peak RSS MiB",
        ],
    );
    for (name, run) in [
        ("none", &alone),
        ("B flooded (the default: fair share, no cap)", &flooded),
        ("B flooded, B's max_cores = 1", &capped),
    ] {
        table.row(vec![
            name.to_string(),
            run.a_tasks.to_string(),
            format!("{:.2}", run.a_p50.as_secs_f64() * 1e3),
            format!("{:.2}", run.a_p99.as_secs_f64() * 1e3),
            format!("{:?}", run.b_ended),
            run.b_wrong.to_string(),
            mib(run.rss_peak),
        ]);
    }
    table.print();
    println!(
        "   target: A's p99 beside B ≤ 2 × its p99 alone: {:.1} × (B capped at 1 core: {:.1} ×)",
        flooded.a_p99.as_secs_f64() / alone.a_p99.as_secs_f64(),
        capped.a_p99.as_secs_f64() / alone.a_p99.as_secs_f64()
    );
    Ok(())
}

/// A's latency over `window`, with B flooded if `flood`, B's guests bounded to `b_max_cores`
/// cores (`None`: the default).
async fn measure(
    runtime: &Runtime,
    flood: bool,
    b_max_cores: Option<u32>,
    window: Duration,
) -> Result<Window> {
    let fake = FakeSfn::start().await;
    fake.set_poll_hold(Duration::from_millis(50));
    let (a_arn, b_arn) = (fake.create_activity("a"), fake.create_activity("b"));
    let mut a = ActivityConfig::new(a_arn.clone(), guest_path("rust-order")?);
    a.max_concurrency = 4;
    a.pollers = 2;
    let mut b = ActivityConfig::new(b_arn.clone(), guest_path("adversary")?);
    b.max_concurrency = 8;
    b.pollers = 4;
    b.timeout = Some(HumanDuration(Duration::from_secs(2)));
    b.memory_limit = Some(ByteSize(64 << 20));
    b.capabilities.cpu.max_cores = b_max_cores;
    let (shutdown, running) = serve_in_process(runtime, &fake, "neighbours", vec![a, b]).await?;

    let mut a_tokens: Vec<String> = Vec::new();
    let mut b_tokens: Vec<(String, &str)> = Vec::new();
    let mut rss_peak = 0;
    let started = Instant::now();
    let mut next_hostile = 0;
    while started.elapsed() < window {
        a_tokens.push(fake.enqueue(&a_arn, ORDER));
        if flood {
            let open = b_tokens
                .iter()
                .filter(|(token, _)| fake.task(token.as_str()).ended_at.is_none())
                .count();
            for _ in open..FLOOD_DEPTH {
                let (input, expected) = HOSTILE[next_hostile % HOSTILE.len()];
                next_hostile += 1;
                b_tokens.push((fake.enqueue(&b_arn, input), expected));
            }
        }
        rss_peak = rss_peak.max(rss_bytes(None));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_until_ended(&fake, &a_tokens, Duration::from_secs(120)).await?;
    shutdown.cancel();
    running.await??;
    let mut latencies = Vec::new();
    for token in &a_tokens {
        let record = fake.task(token);
        if !matches!(record.state, TaskState::Succeeded(_)) {
            bail!("an A task ended {:?}", record.state);
        }
        latencies.push(record.ended_at.unwrap() - record.queued_at);
    }
    let (a_p50, a_p99) = percentiles(&mut latencies);
    let (mut b_ended, mut b_wrong) = (BTreeMap::new(), 0);
    for (token, expected) in &b_tokens {
        let ended = match fake.task(token).state {
            TaskState::Failed { error, .. } => error,
            TaskState::Succeeded(_) => "(succeeds, output bounded)".to_string(),
            _ => continue, // still queued when the window closed
        };
        if ended != *expected {
            b_wrong += 1;
        }
        *b_ended.entry(ended).or_insert(0) += 1;
    }
    Ok(Window {
        a_tasks: a_tokens.len(),
        a_p50,
        a_p99,
        b_ended,
        b_wrong,
        rss_peak,
    })
}
