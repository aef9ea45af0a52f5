//! One instance's [`Store`]: every capability's per-task state, the resource table they
//! share, the memory limiter and the deadline; built fresh for a task, or for an instance
//! that serves several (each task then swaps in its own capabilities and deadline).

use crate::sandbox::capability::{TaskCapabilities, TaskUsage};
use crate::sandbox::cpu_share::GuestCpu;
use crate::sandbox::limits::{MemoryLimiter, TaskLimits};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};

/// Everything a task's [`Store`] holds.
pub struct TaskState {
    capabilities: TaskCapabilities,
    table: ResourceTable,
    limiter: MemoryLimiter,
    deadline: Instant,
}

impl TaskState {
    /// Every capability's state and the resource table they share, borrowed together: what
    /// a capability's host functions reach their state through.
    pub fn capabilities_and_table(&mut self) -> (&mut TaskCapabilities, &mut ResourceTable) {
        (&mut self.capabilities, &mut self.table)
    }

    /// Gives the store to its next task: that task's `capabilities` and `deadline`. The
    /// guest's memory and resources stay; the limiter keeps counting the memory held (the
    /// limit is the instance's, over its life) and forgets an earlier task's peak.
    pub fn begin_task(&mut self, capabilities: TaskCapabilities, deadline: Instant) {
        self.capabilities = capabilities;
        self.deadline = deadline;
        self.limiter.begin_task();
    }

    /// What the task has used of each capability (handles: read them after the store is
    /// dropped).
    pub fn usage(&self) -> TaskUsage {
        self.capabilities.usage()
    }

    /// When the guest must stop.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The guest's place in its activity's CPU share (see [`crate::sandbox::cpu_share`]).
    pub(crate) fn cpu(&self) -> Arc<GuestCpu> {
        self.capabilities.cpu.clone()
    }

    /// The task's memory accounting.
    pub fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }
}

/// A fresh store for one task with `capabilities` (each capability's state for it): the
/// limiter caps its memory, and at every epoch tick the guest yields to the runtime (giving
/// back its CPU turn, see [`crate::sandbox::cpu_share`]), or is interrupted once its
/// `deadline` has passed or the worker has interrupted it.
pub fn new_store(
    engine: &Engine,
    limits: &TaskLimits,
    capabilities: TaskCapabilities,
    deadline: Instant,
) -> Store<TaskState> {
    let state = TaskState {
        capabilities,
        table: ResourceTable::new(),
        limiter: MemoryLimiter::new(limits.memory_limit),
        deadline,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|context| {
        let state = context.data();
        let capabilities = &state.capabilities;
        if capabilities.host.interrupt().reason().is_some() || Instant::now() >= state.deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            capabilities.cpu.note_tick();
            // tokio's yield (not wasmtime's plain one, which wakes the task at once into the
            // thread's next slot): the other tasks and the I/O driver run first.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
    store
}
