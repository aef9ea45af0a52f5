#!/usr/bin/env bash
# Builds guest components from source into target/guests/NAME.wasm.
#
#   guest/build.sh                 # every guest
#   guest/build.sh rust-order ...  # just these
#
# Guests: rust-order, adversary (Rust), python-order (componentize-py), js-order (jco),
# c-order (clang + wasi-libc + wit-bindgen c). The toolchains are installed by
# .ci/install-tools (which says why each step is as it is).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/target/guests"
work="$repo/target/guest-build"
mkdir -p "$out" "$work"

all=(rust-order adversary python-order js-order c-order)
[ $# -gt 0 ] || set -- "${all[@]}"

note() { printf 'guest/build.sh: %s\n' "$*" >&2; }
need() {
    command -v "$1" >/dev/null 2>&1 || {
        note "'$1' is missing: run .ci/install-tools first"
        exit 1
    }
}

# Rust guests: Debian's rustc-web (which ships wasm32 std sources) with build-std; called by
# absolute path so that the host's rustup toolchain stays first on PATH.
build_rust() {
    local crate=$1
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] || {
        note "Debian's cargo-web/rustc-web are missing: run .ci/install-tools first"
        exit 1
    }
    env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        /usr/bin/cargo build --quiet --release --target wasm32-wasip2 \
        -Zbuild-std=std,panic_abort \
        --config 'target.wasm32-wasip2.rustflags=["-L","native=/usr/lib/wasm32-wasi"]' \
        --manifest-path "$repo/guest/Cargo.toml" --target-dir "$work/rust" -p "$crate"
    cp "$work/rust/wasm32-wasip2/release/${crate//-/_}.wasm" "$out/$crate.wasm"
}

build_python() {
    need componentize-py
    componentize-py -d "$repo/wit" -w handler componentize app \
        -p "$repo/guest/examples/python-order" -o "$out/python-order.wasm" >/dev/null
}

build_js() {
    local dir="$repo/guest/examples/js-order"
    need npm
    [ -x "$dir/node_modules/.bin/jco" ] || (cd "$dir" && npm ci --no-audit --no-fund --silent)
    # No wasi:http: the host grants no network.
    (cd "$dir" && ./node_modules/.bin/jco componentize app.js --wit "$repo/wit" -n handler -d http fetch-event \
        -o "$out/js-order.wasm" >/dev/null)
}

# The preview1 reactor adapter turns wasi-libc's preview1 imports into WASI p2; it ships in
# the crate wasi-preview1-component-adapter-provider, which guest/wasi-adapter writes out.
adapter() {
    local file="$work/wasi_snapshot_preview1.reactor.wasm"
    if [ ! -f "$file" ]; then
        cargo run --quiet --release --manifest-path "$repo/Cargo.toml" -p wasi-adapter -- "$file.tmp"
        mv "$file.tmp" "$file"
    fi
    echo "$file"
}

build_c() {
    local dir="$repo/guest/examples/c-order" gen="$work/c-order-bindings"
    need wit-bindgen
    need wasm-tools
    need clang-14
    rm -rf "$gen" && mkdir -p "$gen"
    wit-bindgen c "$repo/wit" --world handler --out-dir "$gen" >/dev/null
    clang-14 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror -Wl,--strip-all \
        -I "$gen" "$dir"/*.c "$gen"/*.c "$gen"/*_component_type.o -o "$work/c-order.core.wasm"
    wasm-tools component new "$work/c-order.core.wasm" \
        --adapt "wasi_snapshot_preview1=$(adapter)" -o "$out/c-order.wasm"
}

for guest in "$@"; do
    note "building $guest"
    case "$guest" in
        rust-order | adversary) build_rust "$guest" ;;
        python-order) build_python ;;
        js-order) build_js ;;
        c-order) build_c ;;
        *)
            note "unknown guest '$guest' (known: ${all[*]})"
            exit 2
            ;;
    esac
done
