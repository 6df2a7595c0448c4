#!/usr/bin/env bash
# Runs every test of the suite: unit, property, integration and end-to-end scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast "$@"
