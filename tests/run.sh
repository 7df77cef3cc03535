#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then
# runs every test. Tests start their own servers on loopback ports and stop them. The
# `failpoints` feature gives the daemon the crash points the chaos test (tests/it/chaos.rs)
# fires; the container image (deploy/Dockerfile, --no-default-features) never has it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo test --locked --workspace --features canaryd/failpoints "$@"
