//! sfn-wasm-worker: an AWS Step Functions activity worker that runs each task in a fresh,
//! sandboxed WebAssembly component.
//!
//! - [`runtime`]: the engine, loading and checking components against the WIT world;
//! - [`task`]: one task in its own store, with limits, and the outcome mapping;
//! - [`outcome`]: the stable outcome table (error names, size limits, truncation);
//! - [`host_api`]: the host functions guests import (`log`, `heartbeat`) and interruption.

pub mod backoff;
pub mod bindings;
pub mod config;
pub mod engine;
pub mod host_api;
pub mod outcome;
pub mod output_capture;
pub mod runtime;
pub mod sfn;
pub mod shutdown;
pub mod task;
pub mod units;
pub mod worker;
