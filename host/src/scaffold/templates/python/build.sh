#!/usr/bin/env bash
# Builds {{name}}.wasm (needs `pip install componentize-py`). Use `-w handler-http` instead of
# `-w handler` once the handler calls HTTP services.
set -euo pipefail
cd "$(dirname "$0")"
componentize-py -d wit -w handler componentize app -p . -o {{name}}.wasm
