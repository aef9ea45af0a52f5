#!/usr/bin/env bash
# Builds {{name}}.wasm: wit-bindgen's C bindings, clang for wasm32-wasi (a reactor), then
# wasm-tools turns the core module into a component with the WASI preview1 adapter that
# `sfn-wasm-worker new` wrote next to this script. Needs clang with wasi-libc, wit-bindgen-cli
# (`cargo install wit-bindgen-cli`) and wasm-tools; set CLANG to pick a clang (default: clang-14 or clang).
set -euo pipefail
cd "$(dirname "$0")"
clang=${CLANG:-$(command -v clang-14 || command -v clang)}
mkdir -p gen
wit-bindgen c wit --world handler --out-dir gen >/dev/null
"$clang" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wl,--strip-all \
    -I gen app.c gen/*.c gen/*_component_type.o -o gen/{{name}}.core.wasm
wasm-tools component new gen/{{name}}.core.wasm \
    --adapt wasi_snapshot_preview1=wasi_snapshot_preview1.reactor.wasm -o {{name}}.wasm
