//! Section 1: the sandbox's cost per task (store + instantiate + call + drop), per guest
//! language, next to the bare-instantiate floor and a native Rust function doing the same work.

use crate::report::{percentiles, us, Table};
use crate::{limits, native, task, ORDER};
use anyhow::{bail, Result};
use sfn_wasm_worker::sandbox::host_api::{CountingHeartbeat, Heartbeat};
use sfn_wasm_worker::sandbox::{Grants, Guest, InstancePolicy, Instances, Runtime, TaskHandler};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 1. Instantiate + call + drop per task, per language, next to the floor and native code.
pub(crate) async fn sandbox_cost(
    runtime: &Runtime,
    guests: &[(&str, Guest)],
    iterations: usize,
) -> Result<()> {
    let warmup = iterations / 10 + 10;
    let heartbeat: Arc<dyn Heartbeat> = Arc::new(CountingHeartbeat::default());
    let mut table = Table::new(
        &format!("1. Sandbox cost per task ({iterations} tasks each, after {warmup} warm-up)"),
        &["handler", "p50 µs", "p99 µs", "p50 / floor"],
    );

    // The floor: the least a sandbox costs. `(component)` has no instance and no memory, so it
    // is shown for reference; the ratios use an empty component that owns one 64 KiB memory.
    let nothing = empty_component_floor(runtime, "(component)", iterations, warmup).await?;
    let floor = empty_component_floor(runtime, EMPTY_WITH_MEMORY, iterations, warmup).await?;
    let ratio = |p50: Duration| format!("{:.1}", p50.as_secs_f64() / floor.0.as_secs_f64());
    table.row(vec![
        "reference: InstancePre::instantiate of `(component)` (no memory)".into(),
        us(nothing.0),
        us(nothing.1),
        ratio(nothing.0),
    ]);
    table.row(vec![
        "floor: InstancePre::instantiate of an empty component with one memory".into(),
        us(floor.0),
        us(floor.1),
        ratio(floor.0),
    ]);

    let mut phases = Table::new(
        "1b. Where a task's sandbox time goes, by phase and instance (p50 µs of the same tasks; \
         fresh: made for the task; ready: made before it arrived; warm: instance_reuse)",
        &[
            "guest",
            "instance",
            "store",
            "instantiate",
            "handle",
            "drop",
            "sum of p50s",
            "p50 per task",
            "p99 per task",
        ],
    );
    for (language, guest) in guests {
        for mode in [Mode::Fresh, Mode::Ready, Mode::Warm] {
            let instances = mode.instances(guest);
            let mut samples = Vec::with_capacity(iterations);
            let mut by_phase: [Vec<Duration>; 4] = Default::default();
            for i in 0..warmup + iterations {
                if mode == Mode::Ready {
                    wait_for_ready(&instances).await?;
                }
                let started = Instant::now();
                let (end, stats) = instances
                    .run(
                        task(ORDER, heartbeat.clone()),
                        &limits(),
                        &Grants::default(),
                    )
                    .await;
                let elapsed = started.elapsed();
                if !matches!(&end, sfn_wasm_worker::sandbox::TaskEnd::Report(o) if o.is_success()) {
                    bail!("{language} guest did not succeed: {end:?}");
                }
                if i >= warmup {
                    samples.push(elapsed);
                    let p = stats.phases;
                    for (phase, took) in
                        by_phase
                            .iter_mut()
                            .zip([p.store, p.instantiate, p.handle, p.drop])
                    {
                        phase.push(took);
                    }
                }
            }
            let medians: Vec<Duration> = by_phase
                .iter_mut()
                .map(|phase| percentiles(phase).0)
                .collect();
            let (p50, p99) = percentiles(&mut samples);
            let mut row = vec![language.to_string(), mode.label().to_string()];
            row.extend(medians.iter().map(|median| us(*median)));
            row.push(us(medians.iter().sum()));
            row.extend([us(p50), us(p99)]);
            phases.row(row);
            if mode == Mode::Fresh {
                table.row(vec![
                    format!("{language} guest: instantiate + handle + drop"),
                    us(p50),
                    us(p99),
                    ratio(p50),
                ]);
            }
        }
    }

    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let started = Instant::now();
        std::hint::black_box(native::price_order(std::hint::black_box(ORDER)).unwrap());
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    let (p50, p99) = percentiles(&mut samples);
    table.row(vec![
        "native Rust function, same work".into(),
        us(p50),
        us(p99),
        ratio(p50),
    ]);
    table.print();
    println!("   target: the Rust guest ≤ 3 × the floor");
    phases.print();
    println!(
        "   targets: warm Python and JavaScript ≤ 100 µs per task; fresh Python ≤ 600 µs, \
         fresh JavaScript ≤ 400 µs"
    );
    Ok(())
}

/// How the tasks of a run get their instance.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// An instance made for each task.
    Fresh,
    /// An activity's instances with one made ready before each task (the run waits for it
    /// outside the timed part: the latency of a task that finds one).
    Ready,
    /// An activity's instances with `instance_reuse` past the run's length.
    Warm,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Fresh => "fresh",
            Mode::Ready => "ready",
            Mode::Warm => "warm",
        }
    }

    /// The instances of `guest` for this mode (fresh: no ready instance, no reuse, as
    /// `Guest::run` runs a task).
    fn instances(self, guest: &Guest) -> Instances {
        let (reuse, ready) = match self {
            Mode::Fresh => (1, 0),
            Mode::Ready => (1, 1),
            Mode::Warm => (u32::MAX, 0),
        };
        Instances::new(
            guest.clone(),
            "arn:aws:states:us-east-1:000000000000:activity:bench".into(),
            limits(),
            Grants::default(),
            InstancePolicy {
                reuse,
                ready,
                ..InstancePolicy::default()
            },
        )
    }
}

/// Waits until `instances` holds a ready instance.
async fn wait_for_ready(instances: &Instances) -> Result<()> {
    let started = Instant::now();
    while instances.kept().0 == 0 {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no ready instance was made within 30 s");
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// A component with nothing in it but one core instance owning one 64 KiB memory.
const EMPTY_WITH_MEMORY: &str = r#"(component
  (core module $m (memory (export "memory") 1))
  (core instance $i (instantiate $m)))"#;

/// A bare store plus `InstancePre::instantiate_async` of the component in `wat`, then drop.
async fn empty_component_floor(
    runtime: &Runtime,
    wat: &str,
    iterations: usize,
    warmup: usize,
) -> Result<(Duration, Duration)> {
    let engine = runtime.engine();
    let component =
        wasmtime::component::Component::new(engine, wat).map_err(anyhow::Error::from)?;
    let linker = wasmtime::component::Linker::<()>::new(engine);
    let pre = linker
        .instantiate_pre(&component)
        .map_err(anyhow::Error::from)?;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let started = Instant::now();
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(1);
        std::hint::black_box(
            pre.instantiate_async(&mut store)
                .await
                .map_err(anyhow::Error::from)?,
        );
        drop(store);
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    Ok(percentiles(&mut samples))
}
