#!/usr/bin/env bash
# The demo: on a fresh machine, installs what is missing (LocalStack, the Rust guest
# toolchain), builds the worker and two Rust example guests, starts LocalStack's Step
# Functions on 127.0.0.1, creates activities and state machines, runs the worker, starts a
# handful of executions (orders, and a guest calling a local HTTP service: once allowed, once
# denied) and prints each one's status and output, then stops all it started.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
note() { printf '\n==> %s\n' "$*" >&2; }

note "installing what is missing (Debian's Rust wasm toolchain, LocalStack)"
.ci/install-tools rust localstack
note "building the worker (the first build takes several minutes)"
cargo build --release --quiet --bin sfn-wasm-worker
note "building the Rust example guests (orders; an HTTP call)"
guest/build.sh rust-order rust-fetch

export LOCALSTACK_PORT=${LOCALSTACK_PORT:-4566}
note "starting LocalStack's Step Functions on 127.0.0.1:$LOCALSTACK_PORT"
localstack_pid=$(tests/localstack.sh start)
stop_localstack() {
    if [ -n "$localstack_pid" ]; then
        note "stopping LocalStack"
        tests/localstack.sh stop "$localstack_pid"
    fi
}
trap stop_localstack EXIT

"${LOCALSTACK_HOME:-$HOME/.cache/sfn-wasm-worker/localstack}/venv/bin/python" demo/demo.py \
    --endpoint "http://127.0.0.1:$LOCALSTACK_PORT" \
    --worker target/release/sfn-wasm-worker \
    --component target/guests/rust-order.wasm \
    --fetch-component target/guests/rust-fetch.wasm
