//! The process-wide wasmtime [`Engine`]: pooling allocator sized from the worker's
//! concurrency, copy-on-write memory images, and epoch interruption driven by its own OS
//! thread while guests run.

use crate::sandbox::limits::{
    COMPONENT_INSTANCE_METADATA_BYTES, CORE_INSTANCES_PER_TASK, CORE_INSTANCE_METADATA_BYTES,
    MEMORIES_PER_TASK, READY_SANDBOXES, TABLES_PER_MODULE, TABLES_PER_TASK, TABLE_ELEMENTS,
};
use anyhow::{Context as _, Result};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; also how often a running guest yields to the runtime and
/// has its deadline checked.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Where compiled components are kept on disk (see [`crate::sandbox::artefacts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheSetting {
    /// `$XDG_CACHE_HOME/sfn-wasm-worker`, else `~/.cache/sfn-wasm-worker`.
    #[default]
    Default,
    /// This directory.
    Directory(PathBuf),
    /// No cache: every start compiles every component, into anonymous memory.
    Disabled,
}

impl CacheSetting {
    /// The setting chosen by `--no-cache` (wins) or the first directory given (the command
    /// line's before the config file's), else the default.
    pub fn resolve(disabled: bool, directory: Option<PathBuf>) -> CacheSetting {
        match (disabled, directory) {
            (true, _) => CacheSetting::Disabled,
            (false, Some(dir)) => CacheSetting::Directory(dir),
            (false, None) => CacheSetting::Default,
        }
    }

    /// The directory this setting names, if any (`None` when disabled, or when the default
    /// has no home to live in).
    pub fn directory(&self) -> Option<PathBuf> {
        match self {
            CacheSetting::Disabled => None,
            CacheSetting::Directory(dir) => Some(dir.clone()),
            CacheSetting::Default => std::env::var_os("XDG_CACHE_HOME")
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
                .map(|base| base.join("sfn-wasm-worker")),
        }
    }
}

/// What the engine must be sized for.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The most tasks that run at once in this process, across all activities.
    pub max_concurrent_tasks: u32,
    /// The largest per-task memory limit in use, in bytes: the size of a pooled memory slot.
    pub max_memory_bytes: u64,
    /// Where compiled components are kept.
    pub cache: CacheSetting,
}

/// Builds the engine, preferring the pooling allocator and falling back (with a warning) to
/// on-demand allocation when the pool's address-space reservation fails.
pub fn build_engine(settings: &EngineSettings) -> Result<Engine> {
    let mut config = base_config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
        settings,
    )?));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            tracing::warn!(
                error = %format!("{err:#}"),
                concurrency = settings.max_concurrent_tasks,
                "could not reserve address space for the pooling allocator; \
                 falling back to on-demand allocation (slower instantiation)"
            );
            let mut config = base_config();
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)
                .map_err(anyhow::Error::from)
                .context("creating the wasm engine with on-demand allocation")
        }
    }
}

/// What every engine of the worker shares; precompiled components must be built with it.
fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    config
}

/// The pool for `settings`: per task slot and per ready sandbox, exactly what one task's
/// store may create.
fn pooling_config(settings: &EngineSettings) -> Result<PoolingAllocationConfig> {
    let tasks = settings
        .max_concurrent_tasks
        .max(1)
        .saturating_add(READY_SANDBOXES);
    let per_task = |each: u32, what: &str| {
        tasks.checked_mul(each).with_context(|| {
            format!(
                "a pool of {tasks} tasks needs more {what} than a u32 counts: reserve fewer tasks"
            )
        })
    };
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(tasks)
        .total_stacks(tasks)
        .max_core_instances_per_component(CORE_INSTANCES_PER_TASK)
        .total_core_instances(per_task(CORE_INSTANCES_PER_TASK, "core instances")?)
        .max_memories_per_component(MEMORIES_PER_TASK)
        .total_memories(per_task(MEMORIES_PER_TASK, "memories")?)
        .max_tables_per_component(TABLES_PER_TASK)
        .max_tables_per_module(TABLES_PER_MODULE)
        .total_tables(per_task(TABLES_PER_TASK, "tables")?)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(settings.max_memory_bytes).unwrap_or(usize::MAX))
        .max_core_instance_size(CORE_INSTANCE_METADATA_BYTES)
        .max_component_instance_size(COMPONENT_INSTANCE_METADATA_BYTES)
        // Keep the first pages of each slot mapped between tasks: the next task's first
        // touches then need no page faults. Measured on 2 cores for a small WASI guest:
        // instantiate + call + drop 38–72 µs pooled, 19–42 µs with these two settings and
        // pagemap_scan, 86–141 µs with on-demand allocation.
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        // Reuse a slot used before (another guest's, if none of this guest's is free) before
        // a never-used one, so that the slots ever touched, each keeping the bytes above
        // resident while unused, are about as many as were ever in use at once rather than
        // creeping toward the whole pool (wasmtime's default keeps up to 100 unused before
        // reusing). The soak's 10 000 tasks end with 55 MiB kept in unused slots, 60 MiB with
        // the default.
        .max_unused_warm_slots(0)
        .pagemap_scan(Enabled::Auto);
    Ok(pool)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated OS thread, so that even a
/// guest spinning on every runtime thread is still interrupted, but only while some guest is
/// in its sandbox: an idle worker's ticker sleeps without waking.
///
/// Every clone is a handle on the same thread, and the thread stops only when the last
/// handle is dropped: the runtime holds one, every loaded [`crate::sandbox::Guest`] holds
/// one, and every running guest holds one through its [`TickGuard`]. So no store can run
/// without a ticker, whatever is dropped first (a runtime replaced by a reload, a reload
/// loop that ends as the drain starts, a bench's runtime).
#[derive(Clone)]
pub struct EpochTicker {
    thread: Arc<TickerThread>,
}

/// The ticker's thread and the state it shares with the guests; stops the thread when
/// dropped (with the last [`EpochTicker`]).
struct TickerThread {
    shared: Arc<DemandState>,
    handle: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct DemandState {
    /// Guests now in their sandbox, and whether the ticker must stop.
    counts: Mutex<Demand>,
    /// Wakes the ticker when the first guest enters, or when it must stop.
    changed: Condvar,
}

#[derive(Default)]
struct Demand {
    guests: usize,
    stop: bool,
}

/// One guest's claim on the ticker; the ticker goes idle when the last claim is dropped,
/// and cannot stop while any claim is held.
pub struct TickGuard {
    ticker: EpochTicker,
}

impl EpochTicker {
    /// Starts the ticker thread of `engine`; it ticks only while a guest has
    /// [`EpochTicker::enter`]ed.
    pub fn start(engine: &Engine) -> Result<EpochTicker> {
        let shared = Arc::new(DemandState::default());
        let weak = engine.weak();
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || loop {
                {
                    let mut demand = state.counts.lock().unwrap();
                    while demand.guests == 0 && !demand.stop {
                        demand = state.changed.wait(demand).unwrap();
                    }
                    if demand.stop {
                        return;
                    }
                }
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            })
            .context("starting the epoch ticker thread")?;
        Ok(EpochTicker {
            thread: Arc::new(TickerThread {
                shared,
                handle: Some(handle),
            }),
        })
    }

    /// Claims ticks until the returned guard is dropped. Under the ticker's own lock: a
    /// ticker about to go idle sees the claim, and an idle one is woken by it, so a guest
    /// entering while the ticker goes idle is still interrupted within one tick of its
    /// deadline.
    pub fn enter(&self) -> TickGuard {
        let shared = &self.thread.shared;
        let mut demand = shared.counts.lock().unwrap();
        demand.guests += 1;
        if demand.guests == 1 {
            shared.changed.notify_one();
        }
        TickGuard {
            ticker: self.clone(),
        }
    }
}

impl Drop for TickGuard {
    fn drop(&mut self) {
        self.ticker.thread.shared.counts.lock().unwrap().guests -= 1;
    }
}

impl Drop for TickerThread {
    fn drop(&mut self) {
        self.shared.counts.lock().unwrap().stop = true;
        self.shared.changed.notify_one();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use wasmtime::{Module, Store};

    /// A guest that spins forever must be interrupted, also when it enters just as the
    /// previous guest left (the ticker going idle at that very moment).
    #[test]
    fn a_spinning_guest_is_interrupted_even_as_the_ticker_goes_idle() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        let module =
            Module::new(&engine, r#"(module (func (export "spin") (loop br 0)))"#).unwrap();
        let demand = ticker.clone();
        drop(ticker); // the guests' handle alone keeps it ticking
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            // Each guest enters right after the previous one left: the ticker is then
            // sleeping its last tick, or about to wait for demand.
            for _ in 0..50 {
                let _guard = demand.enter();
                let mut store = Store::new(&engine, ());
                store.set_epoch_deadline(1);
                store.epoch_deadline_trap();
                let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
                let spin = instance
                    .get_typed_func::<(), ()>(&mut store, "spin")
                    .unwrap();
                let started = std::time::Instant::now();
                let trap = spin.call(&mut store, ()).unwrap_err();
                assert_eq!(
                    trap.downcast_ref::<wasmtime::Trap>(),
                    Some(&wasmtime::Trap::Interrupt)
                );
                // Its deadline was the next tick: stopped within a tick or two, never left
                // spinning until some later guest restarts the ticker.
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{:?}",
                    started.elapsed()
                );
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("a spinning guest was never interrupted: the ticker stayed idle");
    }
}
