#!/usr/bin/env bash
# Builds guest components from source into target/guests/NAME.wasm.
#
#   guest/build.sh                 # every guest
#   guest/build.sh rust-order ...  # just these
#
# Guests: rust-order, rust-fetch, rust-aws, rust-config, adversary, http-probe, versioned-1, versioned-2 (Rust), python-order, python-fetch, python-aws,
# python-config, python-cache, python-kit (componentize-py), js-order, js-fetch, js-aws, js-config,
# js-cache, js-kit, ts-kit
# (esbuild + jco; ts-kit is TypeScript), c-order (clang +
# wasi-libc + wit-bindgen c).
# The toolchains are installed by .ci/install-tools (which says why each step is as it is).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/target/guests"
work="$repo/target/guest-build"
mkdir -p "$out" "$work"

all=(rust-order adversary http-probe rust-fetch rust-aws rust-config versioned-1 versioned-2 python-order python-fetch python-aws python-config python-cache python-kit js-order js-fetch js-aws js-config js-cache js-kit ts-kit c-order)
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
    local crate=$1 name=${2:-$1}
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] || {
        note "Debian's cargo-web/rustc-web are missing: run .ci/install-tools first"
        exit 1
    }
    env RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        /usr/bin/cargo build --quiet --release --target wasm32-wasip2 \
        -Zbuild-std=std,panic_abort \
        --config 'target.wasm32-wasip2.rustflags=["-L","native=/usr/lib/wasm32-wasi"]' \
        --manifest-path "$repo/guest/Cargo.toml" --target-dir "$work/rust" -p "$crate"
    cp "$work/rust/wasm32-wasip2/release/${crate//-/_}.wasm" "$out/$name.wasm"
}

# Where a Python or JavaScript guest's source is: guest/examples/NAME or guest/test-guests/NAME.
source_dir() {
    local dir
    for dir in "$repo/guest/examples/$1" "$repo/guest/test-guests/$1"; do
        [ -d "$dir" ] && echo "$dir" && return
    done
    note "no source directory for guest '$1'"
    exit 2
}

# Python guests: componentize-py against the world the guest needs (`handler`, or
# `handler-http` for guests that call out), with the Python kit (guest/kits/python) importable.
build_python() {
    local name=$1 world=$2
    need componentize-py
    componentize-py -d "$repo/wit" -w "$world" componentize app \
        -p "$(source_dir "$name")" -p "$repo/guest/kits/python" -o "$out/$name.wasm" >/dev/null
}

# JavaScript guests: the entry file (app.js, or app.ts for TypeScript) bundled with what it imports (the JavaScript kit) by
# esbuild, then componentized by jco; both pinned in guest/js-toolchain. `-d http` removes
# StarlingMonkey's HTTP client from guests that make no requests (they import no wasi:http).
build_js() {
    local name=$1 world=$2 toolchain="$repo/guest/js-toolchain"
    need npm
    [ -x "$toolchain/node_modules/.bin/jco" ] && [ -x "$toolchain/node_modules/.bin/esbuild" ] ||
        (cd "$toolchain" && npm ci --no-audit --no-fund --silent)
    local bundle="$work/$name.bundle.js" entry
    entry="$(source_dir "$name")/app.js"
    [ -f "$entry" ] || entry="${entry%.js}.ts" # TypeScript: esbuild strips the types
    "$toolchain/node_modules/.bin/esbuild" "$entry" --bundle --format=esm \
        --keep-names --log-level=warning --external:'sfn:*' --external:'wasi:*' --outfile="$bundle"
    local disable=(-d fetch-event)
    [ "$world" = handler ] && disable=(-d http fetch-event)
    (cd "$work" && "$toolchain/node_modules/.bin/jco" componentize "$bundle" \
        --wit "$repo/wit" -n "$world" "${disable[@]}" -o "$out/$name.wasm" >/dev/null)
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
        rust-order | adversary | http-probe | rust-fetch | rust-aws | rust-config) build_rust "$guest" ;;
        # One crate, two builds that say which they are (hot-reload tests).
        versioned-1 | versioned-2) GUEST_VERSION=${guest#versioned-} build_rust versioned "$guest" ;;
        python-order) build_python python-order handler ;;
        python-fetch) build_python python-fetch handler-http ;;
        python-aws) build_python python-aws handler-http ;;
        python-config) build_python python-config handler ;;
        python-cache) build_python python-cache handler ;;
        js-order) build_js js-order handler ;;
        js-fetch) build_js js-fetch handler-http ;;
        js-aws) build_js js-aws handler-http ;;
        js-config) build_js js-config handler ;;
        js-cache) build_js js-cache handler ;;
        ts-kit) build_js ts-kit handler-http ;;
        python-kit) build_python python-kit handler ;;
        js-kit) build_js js-kit handler ;;
        c-order) build_c ;;
        *)
            note "unknown guest '$guest' (known: ${all[*]})"
            exit 2
            ;;
    esac
done
