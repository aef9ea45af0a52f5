//! The process-wide wasmtime [`Engine`]: pooling allocator sized from the worker's
//! concurrency, copy-on-write memory images, epoch interruption driven by its own OS thread,
//! and the on-disk compilation cache.

use anyhow::{Context as _, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig,
};

/// How often the epoch advances; also how often a running guest yields to the runtime and
/// has its deadline checked.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances one component may create (componentize-py guests use a dozen or so).
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories one component may create (main memory, adapters, interpreters).
const MEMORIES_PER_COMPONENT: u32 = 8;
/// Tables one component may create.
const TABLES_PER_COMPONENT: u32 = 32;
/// Tables one core module may declare.
const TABLES_PER_MODULE: u32 = 4;
/// Elements per table: interpreters compiled to wasm have large indirect-call tables.
pub const TABLE_ELEMENTS: usize = 100_000;

/// Where compiled components are cached on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheSetting {
    /// wasmtime's default directory (under `$XDG_CACHE_HOME` or `~/.cache`).
    #[default]
    Default,
    /// This directory.
    Directory(PathBuf),
    /// No cache: every start compiles every component.
    Disabled,
}

/// What the engine must be sized for.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The most tasks that run at once in this process, across all activities.
    pub max_concurrent_tasks: u32,
    /// The largest per-task memory limit in use, in bytes: the size of a pooled memory slot.
    pub max_memory_bytes: u64,
    /// The on-disk compilation cache.
    pub cache: CacheSetting,
}

/// Builds the engine, preferring the pooling allocator and falling back (with a warning) to
/// on-demand allocation when the pool's address-space reservation fails.
pub fn build_engine(settings: &EngineSettings) -> Result<Engine> {
    let mut config = base_config(settings)?;
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(
        settings,
    )));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            tracing::warn!(
                error = %format!("{err:#}"),
                concurrency = settings.max_concurrent_tasks,
                "could not reserve address space for the pooling allocator; \
                 falling back to on-demand allocation (slower instantiation)"
            );
            let mut config = base_config(settings)?;
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)
                .map_err(anyhow::Error::from)
                .context("creating the wasm engine with on-demand allocation")
        }
    }
}

fn base_config(settings: &EngineSettings) -> Result<Config> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
    config.cache(open_cache(&settings.cache));
    Ok(config)
}

fn open_cache(setting: &CacheSetting) -> Option<Cache> {
    let mut cache_config = CacheConfig::new();
    match setting {
        CacheSetting::Disabled => return None,
        CacheSetting::Default => {}
        CacheSetting::Directory(dir) => {
            cache_config.with_directory(dir);
        }
    }
    match Cache::new(cache_config) {
        Ok(cache) => Some(cache),
        Err(err) => {
            tracing::warn!(
                error = %format!("{err:#}"),
                "the compilation cache is unavailable; components will be compiled at every start"
            );
            None
        }
    }
}

fn pooling_config(settings: &EngineSettings) -> PoolingAllocationConfig {
    let tasks = settings.max_concurrent_tasks.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(tasks)
        .total_stacks(tasks)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(tasks * CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(tasks * MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_tables_per_module(TABLES_PER_MODULE)
        .total_tables(tasks * TABLES_PER_COMPONENT)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size(usize::try_from(settings.max_memory_bytes).unwrap_or(usize::MAX))
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(1 << 20)
        // Keep the first pages of each slot mapped between tasks: the next task's first
        // touches then need no page faults (see ../shared/PERFORMANCE.md).
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a dedicated OS thread, so that even a
/// guest spinning on every runtime thread is still interrupted. Stops when dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`'s epoch.
    pub fn start(engine: &Engine) -> Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the epoch ticker thread")?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
