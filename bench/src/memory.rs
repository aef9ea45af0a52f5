//! Section 3: RSS idle and with 64 tasks per guest language in flight.

use crate::report::{mib, Table};
use crate::{limits, task, ORDER};
use anyhow::{bail, Result};
use serde_json::json;
use sfn_wasm_worker::sandbox::host_api::{BeatFuture, Heartbeat};
use sfn_wasm_worker::sandbox::{Grants, Guest};
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

pub(crate) fn rss_bytes(pid: Option<u32>) -> u64 {
    let path = pid.map_or("/proc/self/status".to_string(), |pid| {
        format!("/proc/{pid}/status")
    });
    std::fs::read_to_string(path)
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
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
    let mut input: serde_json::Value = serde_json::from_str(ORDER)?;
    input["heartbeat"] = json!(true);
    let input = input.to_string();
    for (language, guest) in guests {
        let idle = rss_bytes(None);
        let gate = Arc::new(Gate {
            arrived: AtomicUsize::new(0),
            release: tokio::sync::watch::channel(false).0,
        });
        let mut running = Vec::new();
        for _ in 0..IN_FLIGHT {
            let (guest, gate, input) = (guest.clone(), gate.clone(), input.clone());
            running.push(tokio::spawn(async move {
                guest
                    .run(task(&input, gate), &limits(), &Grants::default())
                    .await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while gate.arrived.load(Ordering::SeqCst) < IN_FLIGHT {
            if Instant::now() > deadline {
                bail!(
                    "{language}: only {} tasks reached their heartbeat",
                    gate.arrived.load(Ordering::SeqCst)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let busy = rss_bytes(None);
        gate.release.send_replace(true);
        let mut linear = 0;
        for one in running {
            let (end, stats) = one.await?;
            if !matches!(&end, sfn_wasm_worker::sandbox::TaskEnd::Report(o) if o.is_success()) {
                bail!("{language}: {end:?}");
            }
            linear += stats.peak_memory;
        }
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
