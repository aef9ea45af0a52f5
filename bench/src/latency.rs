//! Section 1c: a task's latency through the worker, from the poll that hands it out to its
//! report landing, with a fresh instance made for it (`ready_instances = 0`), one made ready
//! before it arrived (the default) and a warm one (`instance_reuse`): one activity, one slot,
//! tasks queued one at a time with a pause between them (the worker waits on its poll, as a
//! lightly loaded worker does), the fake answering at once.

use crate::report::{percentiles, us, Table};
use crate::{guest_path, serve_in_process, ORDER};
use anyhow::{bail, Result};
use sfn_fake::{FakeSfn, TaskState};
use sfn_wasm_worker::config::ActivityConfig;
use sfn_wasm_worker::sandbox::Runtime;
use std::time::Duration;

/// Pause between one task's report and the next task: time for a ready instance to be made.
const PAUSE: Duration = Duration::from_millis(20);

/// 1c, `tasks` tasks per guest and instance kind.
pub(crate) async fn latency(
    runtime: &Runtime,
    guests: &[(&str, &str)],
    tasks: usize,
) -> Result<()> {
    let mut table = Table::new(
        &format!(
            "1c. Latency through the worker, hand-out → report landed ({tasks} tasks one at a time, \
             the fake answering at once)"
        ),
        &["guest", "instance", "p50 µs", "p99 µs"],
    );
    for (language, name) in guests {
        for (kind, ready, reuse) in [("fresh", 0, 1), ("ready", 1, 1), ("warm", 0, u32::MAX)] {
            let fake = FakeSfn::start().await;
            fake.set_poll_hold(Duration::from_secs(5));
            let arn = fake.create_activity("latency");
            let mut activity = ActivityConfig::new(arn.clone(), guest_path(name)?);
            activity.max_concurrency = 1;
            activity.ready_instances = Some(ready);
            activity.instance_reuse = Some(reuse);
            let (shutdown, running) =
                serve_in_process(runtime, &fake, "latency", vec![activity]).await?;
            let mut samples = Vec::with_capacity(tasks);
            for i in 0..tasks + tasks / 10 + 5 {
                tokio::time::sleep(PAUSE).await;
                let token = fake.enqueue(&arn, ORDER);
                let state = fake.wait_for_result(&token, Duration::from_secs(60)).await;
                if !matches!(state, TaskState::Succeeded(_)) {
                    bail!("{language} ({kind}): a task ended {state:?}");
                }
                let record = fake.task(&token);
                if let (Some(out), Some(ended), true) =
                    (record.handed_out_at, record.ended_at, i >= tasks / 10 + 5)
                {
                    samples.push(ended - out);
                }
            }
            shutdown.cancel();
            running.await??;
            let (p50, p99) = percentiles(&mut samples);
            table.row(vec![language.to_string(), kind.into(), us(p50), us(p99)]);
        }
    }
    table.print();
    Ok(())
}
