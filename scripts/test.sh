#!/usr/bin/env bash
# Runs every test of campaign-pipeline on a fresh machine: installs what the tests need
# (OpenSSL headers for librdkafka, the tansu broker, SeaweedFS for the S3 warehouse and the REST
# catalog, PyIceberg as an independent reader of its tables, Apache Superset 6.1.0 for the SQL
# endpoint's dashboard (its venv also gives the tests psycopg2), Debian's PostgreSQL 15 for the
# PostgreSQL catalog and psql, Debian's Chromium and ChromeDriver for the dashboard's browser test), then
# builds and runs every test with one target dir. Arguments go to `cargo test` instead (one test
# binary, a filter, `--no-run`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
# tansu compiles for about ten minutes on a fresh machine and leaves a core idle much of that
# time: it builds beside the other installs and the workspace's own build, and the tests wait
# for it only when they are about to start.
tansu_log=$(mktemp)
scripts/broker.sh install >"$tansu_log" 2>&1 &
tansu_install=$!
tansu_installed() {
  if wait "$tansu_install"; then
    tail -n 2 "$tansu_log"
    rm -f "$tansu_log"
    return
  fi
  cat "$tansu_log" >&2
  echo "installing the tansu broker failed (its output above; scripts/broker.sh install)" >&2
  exit 1
}
scripts/seaweedfs.sh install
scripts/pyiceberg.sh install
scripts/superset.sh install
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  echo "installing postgresql (the PostgreSQL catalog's tests run a private server)"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq postgresql
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "installing chromium and chromium-driver (the dashboard's browser test)"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium chromium-driver
fi

scripts/compose.sh
# The tests' servers keep their folders for the logs a failure names; drop the ones of runs that
# ended long ago (a run takes well under 6 hours), so repeated runs do not fill the disk.
find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'campaign-pipeline-server-*' -mmin +360 -exec rm -rf {} + 2>/dev/null || true
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# Panics keep their backtraces (RUST_BACKTRACE); error values do not: iceberg captures one for
# every error it builds, also for the ones it builds and drops while reading a table.
export RUST_LIB_BACKTRACE=${RUST_LIB_BACKTRACE:-0}
tests=(cargo test --locked --features test-hooks)
if [ $# -eq 0 ]; then
  "${tests[@]}" --all-targets --no-run
  tansu_installed
  # Every test binary: the ones that mostly wait on servers side by side, then the simulation
  # alone (scripts/test-binaries.py says why). The build above left nothing for it to build.
  exec scripts/test-binaries.py
fi
# A target named (`--test suite`, `--lib`, ...) is the only one built and run, as with `cargo
# test`; `--all-targets` would add every other target to it.
case " $* " in
  *" --test "* | *" --lib "* | *" --bin "* | *" --bins "* | *" --tests "* | *" --doc "* | \
    *" --bench "* | *" --benches "* | *" --example "* | *" --examples "* | *" --all-targets "*) ;;
  *) tests+=(--all-targets) ;;
esac
case " $* " in
  *" --no-run "*) "${tests[@]}" "$@" ;;
  *) "${tests[@]}" --no-run "$@" ;;
esac
tansu_installed
exec "${tests[@]}" "$@"
