#!/usr/bin/env bash
# The test command, in tiers, fastest first (as ripgrep's CI): formatting, lints, unit tests
# (no models needed), then fetch the models, runtime and photos, check that the fuzz targets
# still build, and run the whole suite against the real models and photos. Used by CI (.ci/run).
# Extra arguments go to the last step: scripts/test.sh --test it cli::  (one file of tests/it)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tier() { echo "== test tier: $1" >&2; }

tier "format (cargo fmt --check)"
cargo fmt --all --check
# Release mode throughout, so every tier shares one build: the tests run real inference, which
# is ~10x slower unoptimised.
tier "lints (clippy, warnings are errors)"
cargo clippy --release --locked --all-targets -- -D warnings
tier "unit tests and the CLI checks that need no models"
cargo test --release --locked --lib --test cli_edge -- --skip needs_models::
tier "models, runtime and test photos (scripts/setup.sh)"
scripts/setup.sh
tier "headless Chromium for the review page's browser test (tests/it/review.rs)"
# Debian's packages; CI runs as root. Without them the browser test says it skipped.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "chromium/chromedriver missing and not root: tests/it/review.rs will skip its browser test" >&2
  fi
fi
tier "exiftool, pyarrow and duckdb for the export tests (tests/export.rs)"
# exiftool reads the XMP sidecars back (Debian's package); pyarrow and duckdb read the Parquet
# files, pinned, in the project's git-ignored .venv (tests/export.rs uses .venv/bin/python).
if ! command -v exiftool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl >/dev/null
  else
    echo "exiftool missing and not root: install libimage-exiftool-perl, or tests/export.rs fails" >&2
  fi
fi
if ! .venv/bin/python -c "import pyarrow, duckdb" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check pyarrow==26.0.1 duckdb==2.0.1
fi
tier "fuzz targets build"
(cd fuzz && CARGO_TARGET_DIR=../target/fuzz-check cargo check --release --locked --bins)
tier "whole suite (real models, real photos)"
cargo test --release --locked "$@"
