#!/usr/bin/env bash
# The test command (README): installs what is missing, builds every guest from source and
# runs every test (unit, outcome table, example guests, CLI, worker against the fake and
# end to end against LocalStack), all under the one release profile.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
.ci/install-tools rust python js c localstack registry
guest/build.sh
cargo test --release --workspace
