//! Section 3: RSS idle and with 64 tasks per guest language in flight.

use crate::report::{mib, Table};
use crate::{guest_path, limits, repo_root, task, ORDER};
use anyhow::{bail, Result};
use serde_json::json;
use sfn_wasm_worker::proc_status;
use sfn_wasm_worker::sandbox::engine::{CacheSetting, EngineSettings};
use sfn_wasm_worker::sandbox::host_api::{BeatFuture, Heartbeat};
use sfn_wasm_worker::sandbox::{Grants, Guest, Runtime, TaskEnd, TaskStats};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Holds every guest's heartbeat call until released: keeps tasks in flight.
struct Gate {
    arrived: AtomicUsize,
    release: tokio::sync::watch::Sender<bool>,
}

impl Heartbeat for Gate {
    fn beat(&self) -> BeatFuture<'_> {
        Box::pin(async move {
            self.arrived.fetch_add(1, Ordering::SeqCst);
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|&open| open).await;
            Ok(())
        })
    }
}

/// Resident memory of process `pid` (this one if `None`), in bytes (0 without `/proc`).
pub(crate) fn rss_bytes(pid: Option<u32>) -> u64 {
    proc_status::resident_bytes(pid).unwrap_or(0)
}

/// This process's virtual size, in bytes (0 without `/proc`).
fn virtual_bytes() -> u64 {
    proc_status::status_bytes(None, "VmSize:").unwrap_or(0)
}

/// Starts `count` tasks of `guest`, each blocked in its heartbeat call, and waits until they
/// all are; returns the gate that holds them and their handles.
async fn hold_in_flight(
    guest: &Guest,
    count: usize,
    limits: &sfn_wasm_worker::sandbox::TaskLimits,
    label: &str,
) -> Result<(
    Arc<Gate>,
    Vec<tokio::task::JoinHandle<(TaskEnd, TaskStats)>>,
)> {
    let mut input: serde_json::Value = serde_json::from_str(ORDER)?;
    input["heartbeat"] = json!(true);
    let input = input.to_string();
    let gate = Arc::new(Gate {
        arrived: AtomicUsize::new(0),
        release: tokio::sync::watch::channel(false).0,
    });
    let mut running = Vec::with_capacity(count);
    for _ in 0..count {
        let (guest, gate, input, limits) =
            (guest.clone(), gate.clone(), input.clone(), limits.clone());
        running.push(tokio::spawn(async move {
            guest
                .run(task(&input, gate), &limits, &Grants::default())
                .await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while gate.arrived.load(Ordering::SeqCst) < count {
        let ended = running.iter().position(|one| one.is_finished());
        if Instant::now() > deadline || ended.is_some() {
            let why = match ended {
                Some(index) => format!("{:?}", running.swap_remove(index).await?.0),
                None => "timed out".into(),
            };
            bail!(
                "{label}: only {} of {count} tasks reached their heartbeat: {why}",
                gate.arrived.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((gate, running))
}

/// Releases the tasks `hold_in_flight` holds; checks they all succeeded and returns the
/// linear memory they grew to, added up.
async fn release(
    gate: &Gate,
    running: Vec<tokio::task::JoinHandle<(TaskEnd, TaskStats)>>,
    label: &str,
) -> Result<u64> {
    gate.release.send_replace(true);
    let mut linear = 0;
    for one in running {
        let (end, stats) = one.await?;
        if !matches!(&end, TaskEnd::Report(o) if o.is_success()) {
            bail!("{label}: {end:?}");
        }
        linear += stats.peak_memory;
    }
    Ok(linear)
}

/// Memory mappings one task in flight needs at most (measured: 10 000 tasks failed with
/// ENOMEM at 9 346 under the default vm.max_map_count of 65 530).
const MAPPINGS_PER_TASK: usize = 8;

/// 3b. `count` Rust tasks in flight in one process, with an engine sized for them: how long
/// they take to start, the address space the pool reserves, RSS per task.
pub(crate) async fn many_in_flight(count: usize) -> Result<()> {
    // Each task in flight maps ~7 regions (stack and guard, memory image, heap...).
    let maps_needed = count * MAPPINGS_PER_TASK;
    let max_map_count: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    if max_map_count < maps_needed {
        println!(
            "\n3b. {count} tasks in flight: skipped, vm.max_map_count is {max_map_count} and they need \
             ~{maps_needed} mappings (`sysctl -w vm.max_map_count={}` first)",
            (maps_needed * 2).next_power_of_two()
        );
        return Ok(());
    }
    let memory_limit: u64 = 4 << 20;
    let mut table = Table::new(
        &format!(
            "3b. {count} Rust tasks in flight in one process (pool of {count}, memory_limit 4MiB)"
        ),
        &[
            "address space reserved GiB",
            "start all s",
            "RSS idle MiB",
            "RSS busy MiB",
            "RSS per task KiB",
            "release all s",
        ],
    );
    let before = virtual_bytes();
    let runtime = Runtime::new(&EngineSettings {
        max_concurrent_tasks: count as u32,
        max_memory_bytes: memory_limit,
        cache: CacheSetting::Directory(repo_root().join("target/wasmtime-cache")),
    })?;
    let reserved = virtual_bytes().saturating_sub(before);
    let guest = runtime.load(&guest_path("rust-order")?)?;
    let limits = sfn_wasm_worker::sandbox::TaskLimits {
        timeout: Duration::from_secs(600),
        memory_limit,
    };
    let idle = rss_bytes(None);
    let started = Instant::now();
    let (gate, running) = hold_in_flight(&guest, count, &limits, "3b").await?;
    let start_all = started.elapsed();
    let busy = rss_bytes(None);
    let released = Instant::now();
    release(&gate, running, "3b").await?;
    table.row(vec![
        format!("{:.0}", reserved as f64 / (1u64 << 30) as f64),
        format!("{:.2}", start_all.as_secs_f64()),
        mib(idle),
        mib(busy),
        format!(
            "{:.0}",
            busy.saturating_sub(idle) as f64 / count as f64 / 1024.0
        ),
        format!("{:.2}", released.elapsed().as_secs_f64()),
    ]);
    table.print();
    println!(
        "   each task: a pooled instance, a fiber stack and its linear memory, blocked in a \
         heartbeat call (the host holds it) as a task waiting on I/O would be"
    );
    Ok(())
}

/// 3. RSS with 64 tasks per language in flight (each blocked in its heartbeat call).
pub(crate) async fn memory(guests: &[(&str, Guest)]) -> Result<()> {
    const IN_FLIGHT: usize = 64;
    let mut table = Table::new(
        &format!("3. Memory: {IN_FLIGHT} tasks in flight per guest language (this process)"),
        &[
            "guest",
            "RSS idle MiB",
            "RSS busy MiB",
            "RSS per task KiB",
            "guest linear memory KiB",
            "overhead per task KiB",
        ],
    );
    for (language, guest) in guests {
        let idle = rss_bytes(None);
        let (gate, running) = hold_in_flight(guest, IN_FLIGHT, &limits(), language).await?;
        let busy = rss_bytes(None);
        let linear = release(&gate, running, language).await?;
        let per_task = busy.saturating_sub(idle) as f64 / IN_FLIGHT as f64;
        let linear_per_task = linear as f64 / IN_FLIGHT as f64;
        table.row(vec![
            language.to_string(),
            mib(idle),
            mib(busy),
            format!("{:.0}", per_task / 1024.0),
            format!("{:.0}", linear_per_task / 1024.0),
            format!("{:.0}", (per_task - linear_per_task) / 1024.0),
        ]);
    }
    table.print();
    println!("   linear memory is the size the guest grew its memories to; RSS counts only pages touched");
    println!("   (copy-on-write images share untouched pages), so the overhead can be negative.");
    Ok(())
}
