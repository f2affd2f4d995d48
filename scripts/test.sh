#!/usr/bin/env bash
# Runs every test of campaign-pipeline on a fresh machine: installs what the tests need
# (OpenSSL headers for librdkafka, the tansu broker), then `cargo test` with one target dir.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
scripts/broker.sh install

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo test --locked --all-targets "$@"
