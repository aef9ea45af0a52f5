#!/usr/bin/env bash
# Installs the benchmark's peers (section 7) from their registries, pinned: the Python one
# into target/bench-peers/venv (requirements.txt), the Node.js one into bench/peers/node_modules
# (package.json + package-lock.json). Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
venv="$here/../../target/bench-peers/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import stepfunctions_activity_worker" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
fi
if [ ! -d "$here/node_modules/step-function-worker" ]; then
    (cd "$here" && npm ci --no-audit --no-fund --ignore-scripts --silent)
fi
