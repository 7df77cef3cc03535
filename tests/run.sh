#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then
# runs every test. Tests start their own servers on loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo test --locked --workspace "$@"
