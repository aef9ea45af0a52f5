//! `sfn-wasm-worker new`: a project started in each language builds with the command its
//! README gives (for Rust, with this machine's Debian toolchain, as guest/build.sh does,
//! since rustup cannot add wasm targets here) and runs its sample input.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `command` in `dir`; panics with its output if it fails.
fn run_in(dir: &Path, command: &mut Command) {
    let output = command
        .current_dir(dir)
        .output()
        .expect("starting the build");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts project `name` in `lang` in a new temporary directory; returns both.
fn new_project(lang: &str, name: &str) -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let output = worker_command()
        .args(["new", "--lang", lang, name, "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = parent.path().join(name);
    assert!(dir.join("README.md").is_file() && dir.join("input.json").is_file());
    (parent, dir)
}

/// `npm install` in `dir`, from the cache where it can.
fn npm_install(dir: &Path) {
    run_in(
        dir,
        Command::new("npm").args([
            "install",
            "--prefer-offline",
            "--no-audit",
            "--no-fund",
            "--silent",
        ]),
    );
}

/// Invokes `component` with the project's sample input and checks the greeting.
fn assert_sample_runs(dir: &Path, component: &Path, expect: &str) {
    let output = worker_command()
        .arg("invoke")
        .arg(component)
        .arg("--input-file")
        .arg(dir.join("input.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let outcome: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(outcome["status"], "succeeded", "{outcome}");
    assert!(outcome["output"].to_string().contains(expect), "{outcome}");
}

#[test]
fn a_new_python_project_builds_and_runs() {
    let (_parent, dir) = new_project("python", "py-greeter");
    run_in(&dir, Command::new("bash").arg("build.sh"));
    assert_sample_runs(&dir, &dir.join("py-greeter.wasm"), "hello, Ada");
}

#[test]
fn a_new_javascript_project_builds_and_runs() {
    let (_parent, dir) = new_project("js", "js-greeter");
    npm_install(&dir);
    run_in(&dir, Command::new("npm").args(["run", "--silent", "build"]));
    assert_sample_runs(&dir, &dir.join("js-greeter.wasm"), "hello, Ada");
}

#[test]
fn a_new_typescript_project_type_checks_builds_and_runs() {
    let (_parent, dir) = new_project("ts", "ts-greeter");
    npm_install(&dir);
    // The build runs `tsc` (strict) first: a type error stops it.
    run_in(&dir, Command::new("npm").args(["run", "--silent", "build"]));
    assert_sample_runs(&dir, &dir.join("ts-greeter.wasm"), "hello, Ada");
    let app = std::fs::read_to_string(dir.join("app.ts")).unwrap();
    std::fs::write(dir.join("app.ts"), app.replace("ctx.taskId", "ctx.taskIdd")).unwrap();
    let refused = Command::new("npm")
        .args(["run", "--silent", "check"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stdout).contains("taskIdd"),
        "{}",
        String::from_utf8_lossy(&refused.stdout)
    );
}

#[test]
fn a_new_rust_project_builds_and_runs() {
    let (_parent, dir) = new_project("rust", "rust-greeter");
    // The README's `cargo build --release --target wasm32-wasip2`, with Debian's toolchain
    // and the guests' target directory (its std is built already).
    let target_dir = repo_root().join("target/guest-build/rust");
    run_in(
        &dir,
        Command::new("/usr/bin/cargo")
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTDOC", "/usr/bin/rustdoc")
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .args(["-Zbuild-std=std,panic_abort", "--config"])
            .arg(r#"target.wasm32-wasip2.rustflags=["-L","native=/usr/lib/wasm32-wasi"]"#)
            .arg("--target-dir")
            .arg(&target_dir),
    );
    let component = target_dir.join("wasm32-wasip2/release/rust_greeter.wasm");
    assert_sample_runs(&dir, &component, "hello, Ada");
}

#[test]
fn a_new_c_project_builds_and_runs() {
    let (_parent, dir) = new_project("c", "c-greeter");
    run_in(&dir, Command::new("bash").arg("build.sh"));
    assert_sample_runs(
        &dir,
        &dir.join("c-greeter.wasm"),
        "\"received\":{\"name\":\"Ada\"}",
    );
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_directory() {
    let parent = tempfile::tempdir().unwrap();
    let output = worker_command()
        .args(["new", "--lang", "python", "Bad Name", "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("lowercase letters"));
    std::fs::create_dir(parent.path().join("taken")).unwrap();
    let output = worker_command()
        .args(["new", "--lang", "c", "taken", "--dir"])
        .arg(parent.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}
