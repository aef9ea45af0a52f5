#!/usr/bin/env bash
# LocalStack's Step Functions (a real ASL interpreter with activities), run as a plain Python
# process on 127.0.0.1 (no Docker). Its differences from AWS that matter here: README, "Tests".
#
#   tests/localstack.sh install   # venv under $LOCALSTACK_HOME (default ~/.cache/sfn-wasm-worker/localstack)
#   tests/localstack.sh start     # starts it on 127.0.0.1:$LOCALSTACK_PORT (default 4566) unless running;
#                                 # prints the pid it started (nothing if one was already up)
#   tests/localstack.sh stop PID  # SIGTERM, then SIGKILL after 5 s
set -euo pipefail

home=${LOCALSTACK_HOME:-$HOME/.cache/sfn-wasm-worker/localstack}
port=${LOCALSTACK_PORT:-4566}
venv="$home/venv"
note() { printf 'tests/localstack.sh: %s\n' "$*" >&2; }

find_python313() {
    local candidate
    for candidate in python3.13 "$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python3"; do
        # pyenv's shim exists even where it cannot run 3.13: try it.
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    note "LocalStack needs Python 3.13 (python3.13 on PATH, or pyenv's 3.13.0); install it first"
    exit 1
}

install() {
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import localstack' 2>/dev/null; then
        return
    fi
    note "installing LocalStack into $venv (about 2 minutes)"
    mkdir -p "$home"
    "$(find_python313)" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'localstack-core[runtime]==2026.3.0' \
        service_identity 'cbor2<6' 'pyopenssl==25.3.0' 'cryptography<47'
}

healthy() {
    curl -sf "http://127.0.0.1:$port/_localstack/health" 2>/dev/null | grep '"stepfunctions": "running"' >/dev/null
}

start() {
    if healthy; then
        return
    fi
    install
    local state="$home/state-$port"
    rm -rf "$state" && mkdir -p "$state/tmp"
    GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_SERVER=hypercorn SERVICES=stepfunctions,events,s3,sqs,secretsmanager,ssm \
        EAGER_SERVICE_LOADING=1 DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        API_ENDPOINT=http://127.0.0.1:9 TMPDIR="$state/tmp" CONFIG_DIR="$state" \
        LOCALSTACK_VOLUME_DIR="$state" \
        setsid "$venv/bin/python" -m localstack.runtime.main >"$state/localstack.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 120); do
        if healthy; then
            echo "$pid"
            return
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            note "LocalStack exited; its log:"
            tail -n 40 "$state/localstack.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    note "LocalStack did not become healthy in 60 s; its log is $state/localstack.log"
    kill -KILL -- "-$pid" 2>/dev/null || true
    exit 1
}

stop() {
    local pid=${1:?usage: tests/localstack.sh stop PID}
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop "${2:-}" ;;
    *)
        note "usage: tests/localstack.sh install|start|stop PID"
        exit 2
        ;;
esac
