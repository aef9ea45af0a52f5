//! The sandbox: everything between a task's JSON input and its outcome, with no knowledge of
//! Step Functions.
//!
//! - [`engine`]: the process-wide wasmtime engine (instance pool, epoch ticker, cache);
//! - [`runtime`]: the engine and linker of the process; loading a component, checking it
//!   against the world, pre-instantiating it, reporting on it (`check`);
//! - [`component`]: a loaded component ([`Guest`]) running one task or its start-up check;
//! - [`artefacts`]: compiled components, cached and mapped from files, loaded once;
//! - [`limits`]: the one table of per-task limits (pool slots, store limiter, memory cap);
//! - [`capability`]: the one list of capabilities an activity may grant its guests, each
//!   with its `[activity.NAME]` table: [`wasi`] (env, read-only directories),
//!   [`outbound`] (HTTP to listed origins; [`outbound::aws`]: AWS calls signed by the host),
//!   [`large_output`] (outputs over 256 KiB to S3), [`guest_config`] (values and secrets
//!   through wasi:config), [`host_api`] (log, heartbeat) and [`cpu_share`] (how many of an
//!   activity's long-running guests may use a core at once);
//! - [`instances`]: an activity's instances: fresh per task, made ready ahead of tasks, or
//!   kept warm for later tasks (opt-in);
//! - [`store`]: one task's store (WASI context, host state, limiter, deadline);
//! - [`host_api`]: also the worker's controls over a running task (heartbeat, interruption);
//! - [`output_capture`]: the bounded tails of a guest's stdout and stderr;
//! - [`run`]: running one task to its end;
//! - [`outcome`]: the outcome rules (README's table): how a run's end becomes a report;
//! - [`bindings`]: host bindings generated from `wit/`.

pub mod artefacts;
pub mod bindings;
pub mod capability;
pub mod component;
pub mod cpu_share;
pub mod engine;
pub mod guest_config;
pub mod host_api;
pub mod instances;
pub mod large_output;
pub mod limits;
pub mod outbound;
pub mod outcome;
pub mod output_capture;
pub mod run;
pub mod runtime;
pub mod store;
pub mod wasi;

pub use capability::{CapabilitySettings, Grants};
pub use component::{Guest, WORLD};
pub use instances::{InstancePolicy, Instances};
pub use limits::TaskLimits;
pub use outcome::{Outcome, TaskEnd};
pub use run::{HandlerFuture, Phases, Task, TaskHandler, TaskStats};
pub use runtime::Runtime;
