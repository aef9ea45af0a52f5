//! sfn-wasm-worker: an AWS Step Functions activity worker that runs each task in a fresh,
//! sandboxed WebAssembly component.
//!
//! Two halves and their configuration:
//! - [`sandbox`]: from a task's JSON input to its outcome, knowing nothing of Step Functions
//!   (engine, components, limits, capabilities, store, host API, output capture, run,
//!   outcome rules);
//! - [`worker`]: Step Functions' side (client, pollers and slots, one task's lifecycle,
//!   heartbeats, reports, counters, shutdown and drain);
//! - [`config`]: the TOML configuration and its human units;
//! - [`registry`]: components pulled from (and pushed to) OCI registries;
//! - [`scaffold`]: new guest projects (`sfn-wasm-worker new`);
//! - [`proc_status`]: a process's memory figures from `/proc`.
//!
//! The `sfn-wasm-worker` binary (`main.rs`) is a thin command line over these.
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod proc_status;
pub mod registry;
pub mod sandbox;
pub mod scaffold;
pub mod worker;
