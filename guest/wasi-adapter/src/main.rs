//! Writes the WASI preview1 *reactor* adapter to the file given as the only argument.
//!
//! `wasm-tools component new --adapt` needs it to turn a wasi-libc core module (the C guest)
//! into a WASI p2 component. The bytes come from the `wasi-preview1-component-adapter-provider`
//! crate, so cargo fetches and caches them like any dependency.

use std::process::ExitCode;
use wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: wasi-adapter OUTPUT.wasm");
        return ExitCode::from(2);
    };
    match std::fs::write(&path, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wasi-adapter: writing {}: {err}", path.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}
