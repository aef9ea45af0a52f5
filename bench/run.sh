#!/usr/bin/env bash
# Runs the benchmark suite (BENCHMARKS.md): builds the worker and every guest, then prints
# every figure in one run. `--quick` uses small counts (CI runs it so the bench never rots);
# `--localstack` adds the LocalStack section.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
.ci/install-tools rust python js c localstack
guest/build.sh
cargo build --release --quiet --bin sfn-wasm-worker
cargo run --release --quiet -p sfn-wasm-worker-bench -- "$@"
