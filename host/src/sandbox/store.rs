//! One task's [`Store`]: its WASI context, host state, memory limiter and deadline, built
//! fresh for every task and dropped when it ends.

use crate::sandbox::capabilities::Grants;
use crate::sandbox::cpu_share::GuestCpu;
use crate::sandbox::host_api::HostState;
use crate::sandbox::limits::{MemoryLimiter, TaskLimits};
use crate::sandbox::outbound::{GuardedView, OutboundHooks};
use crate::sandbox::output_capture::TailCapture;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Everything a task's [`Store`] holds.
pub struct TaskState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundHooks,
    table: ResourceTable,
    limiter: MemoryLimiter,
    host: HostState,
    deadline: Instant,
    cpu: Arc<GuestCpu>,
}

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for TaskState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl TaskState {
    /// The task's wasi:http state for the guarded `outgoing-handler`.
    pub fn guarded_http(&mut self) -> GuardedView<'_> {
        GuardedView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }

    /// The task's outbound HTTP (what it sent and was denied).
    pub fn outbound(&self) -> &OutboundHooks {
        &self.outbound
    }

    /// The host side of the task (heartbeats, logs, interrupt).
    pub fn host(&self) -> &HostState {
        &self.host
    }

    /// When the guest must stop.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The guest's place in its activity's CPU share (see [`crate::sandbox::cpu_share`]).
    pub(crate) fn cpu(&self) -> Arc<GuestCpu> {
        self.cpu.clone()
    }

    /// The task's memory accounting.
    pub fn limiter(&self) -> &MemoryLimiter {
        &self.limiter
    }
}

/// Gives the generated `host` bindings their per-task state.
pub(crate) fn host_state(state: &mut TaskState) -> &mut HostState {
    &mut state.host
}

/// What a new store is made of.
pub struct StoreSetup<'a> {
    /// The task's limits.
    pub limits: &'a TaskLimits,
    /// The task's capabilities.
    pub grants: &'a Grants,
    /// Where the guest's stdout goes.
    pub stdout: &'a TailCapture,
    /// Where the guest's stderr goes.
    pub stderr: &'a TailCapture,
    /// When the guest must stop.
    pub deadline: Instant,
    /// The host side of the task.
    pub host: HostState,
    /// The task's outbound HTTP.
    pub outbound: OutboundHooks,
}

/// A fresh store for one task: the limiter caps its memory, and at every epoch tick the
/// guest yields to the runtime (giving back its CPU turn, see [`crate::sandbox::cpu_share`]),
/// or is interrupted once its deadline has passed or the worker has interrupted it.
pub fn new_store(engine: &Engine, setup: StoreSetup<'_>) -> anyhow::Result<Store<TaskState>> {
    let state = TaskState {
        wasi: setup.grants.wasi_context(setup.stdout, setup.stderr)?,
        http: WasiHttpCtx::new(),
        outbound: setup.outbound,
        table: ResourceTable::new(),
        limiter: MemoryLimiter::new(setup.limits.memory_limit),
        host: setup.host,
        deadline: setup.deadline,
        cpu: Arc::new(GuestCpu::new(&setup.grants.cpu)),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|context| {
        let state = context.data();
        if state.host.interrupt().reason().is_some() || Instant::now() >= state.deadline {
            Ok(UpdateDeadline::Interrupt)
        } else {
            state.cpu.note_tick();
            // tokio's yield (not wasmtime's plain one, which wakes the task at once into the
            // thread's next slot): the other tasks and the I/O driver run first.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        }
    });
    Ok(store)
}
