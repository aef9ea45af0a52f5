//! Section 10: what the task journal costs per task, through the Step Functions fake with a
//! native handler (the worker's own loop, where the journal's cost is largest by share): the
//! same runs with and without `[worker] journal`, alternated, at concurrency 8 and 64.

use crate::native::NativeHandler;
use crate::report::Table;
use crate::throughput::{worker_run, WorkerRun};
use anyhow::Result;
use sfn_wasm_worker::sandbox::TaskHandler;
use std::sync::Arc;
use std::time::Duration;

/// Section 10: process CPU and wall time per task, tasks/s and syncs per task, with and
/// without a journal (in a fresh temporary directory each run).
pub(crate) async fn journal_cost(tasks: usize, repetitions: usize) -> Result<()> {
    let mut table = Table::new(
        &format!(
            "10. The task journal's cost: {tasks} tasks per run, native handler, median of {repetitions} alternating runs (journal in {})",
            std::env::temp_dir().display()
        ),
        &[
            "concurrency",
            "tasks/s without",
            "tasks/s with",
            "CPU µs/task without",
            "CPU µs/task with",
            "journal CPU µs/task",
            "share of the loop's CPU",
            "fsyncs/task",
        ],
    );
    let handler: Arc<dyn TaskHandler> = Arc::new(NativeHandler);
    for concurrency in [8, 64] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..repetitions {
            without
                .push(worker_run(handler.clone(), concurrency, tasks, Duration::ZERO, None).await?);
            let directory = tempfile::tempdir()?;
            with.push(
                worker_run(
                    handler.clone(),
                    concurrency,
                    tasks,
                    Duration::ZERO,
                    Some(directory.path()),
                )
                .await?,
            );
        }
        let (without, with): (&WorkerRun, &WorkerRun) = (
            WorkerRun::median(&mut without),
            WorkerRun::median(&mut with),
        );
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let extra = us(with.cpu_per_task) - us(without.cpu_per_task);
        table.row(vec![
            concurrency.to_string(),
            format!("{:.0}", without.rate),
            format!("{:.0}", with.rate),
            format!("{:.0}", us(without.cpu_per_task)),
            format!("{:.0}", us(with.cpu_per_task)),
            format!("{extra:+.0}"),
            format!("{:+.1} %", extra / us(without.cpu_per_task) * 100.0),
            format!("{:.2}", with.journal_syncs as f64 / tasks as f64),
        ]);
    }
    table.print();
    println!(
        "   two synced writes per task (its token before the guest, its outcome before the \
         report), one fdatasync per batch of records waiting at once; target: the journal \
         under 10 % of the worker's loop CPU per task"
    );
    Ok(())
}
