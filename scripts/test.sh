#!/usr/bin/env bash
# The test command: fetch everything the tests need (models, runtime, photos), then run every
# test against the real models and photos. Used by CI (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
# Release mode: the tests run real inference, which is ~10x slower unoptimised.
cargo test --release --locked "$@"
