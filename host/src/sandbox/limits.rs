//! The sandbox's limits in one table: the engine's instance pool reserves, per task slot,
//! exactly what one task's store may create, and [`MemoryLimiter`] enforces the same
//! numbers (and the per-task memory cap) when the pool is not in use.

use wasmtime::ResourceLimiter;

use std::time::Duration;

/// Core instances one task's component may create (componentize-py guests use a dozen or so).
pub const CORE_INSTANCES_PER_TASK: u32 = 64;
/// Linear memories one task's component may create (main memory, adapters, interpreters).
pub const MEMORIES_PER_TASK: u32 = 8;
/// Tables one task's component may create.
pub const TABLES_PER_TASK: u32 = 32;
/// Tables one core module may declare.
pub const TABLES_PER_MODULE: u32 = 4;
/// Elements per table: interpreters compiled to wasm have large indirect-call tables.
pub const TABLE_ELEMENTS: usize = 100_000;
/// Bytes of VM metadata one core instance may need (globals, tables' anchors, ...).
pub const CORE_INSTANCE_METADATA_BYTES: usize = 8 << 20;
/// Bytes of VM metadata one component instance may need.
pub const COMPONENT_INSTANCE_METADATA_BYTES: usize = 1 << 20;
/// Sandboxes the engine reserves beside the task slots for ready instances (fresh ones
/// made ahead of tasks), shared by every activity.
pub const READY_SANDBOXES: u32 = 16;
/// Bytes of each of stdout and stderr kept per task.
pub const OUTPUT_TAIL_BYTES: usize = 8 * 1024;

/// Default wall-clock limit per task.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default memory cap per task.
pub const DEFAULT_MEMORY_LIMIT: u64 = 128 << 20;

/// The resources one task's guest may use: set per activity.
#[derive(Debug, Clone)]
pub struct TaskLimits {
    /// Wall-clock time the guest may run (instantiation + `handle`).
    pub timeout: Duration,
    /// Total bytes of linear memory the guest may hold, across all its memories.
    pub memory_limit: u64,
}

impl Default for TaskLimits {
    /// An activity's defaults: [`DEFAULT_TIMEOUT`] and [`DEFAULT_MEMORY_LIMIT`].
    fn default() -> TaskLimits {
        TaskLimits {
            timeout: DEFAULT_TIMEOUT,
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

/// Caps a task's total linear memory and remembers a refused grow, so that the trap a
/// guest raises after failing to allocate is reported as `Wasm.OutOfMemory`.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    used: u64,
    peak: u64,
    refused: Option<u64>,
}

impl MemoryLimiter {
    /// A limiter allowing `limit` bytes of linear memory in all.
    pub fn new(limit: u64) -> MemoryLimiter {
        MemoryLimiter {
            limit,
            used: 0,
            peak: 0,
            refused: None,
        }
    }

    /// Starts a later task of the same instance: its peak starts at what is held now, and
    /// no grow was refused yet.
    pub fn begin_task(&mut self) {
        self.peak = self.used;
        self.refused = None;
    }

    /// The most linear memory the guest held at once, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    /// The total the guest asked for when a grow was refused, if one was.
    pub fn refused(&self) -> Option<u64> {
        self.refused
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let wanted = self.used + (desired - current) as u64;
        if wanted > self.limit {
            self.refused = Some(wanted);
            return Ok(false);
        }
        self.used = wanted;
        self.peak = self.peak.max(wanted);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_TASK as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_TASK as usize
    }

    fn memories(&self) -> usize {
        MEMORIES_PER_TASK as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_capped_across_grows_and_the_refusal_is_remembered() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(!limiter.memory_growing(40, 41, None).unwrap());
        assert_eq!(limiter.refused(), Some(101));
        assert_eq!(limiter.peak(), 100);
    }
}
