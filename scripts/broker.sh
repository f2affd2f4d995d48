#!/usr/bin/env bash
# The local Kafka-API broker (tansu) for the demo and for development.
#
#   scripts/broker.sh install    install tansu if missing (cargo install, ~10 minutes once)
#   scripts/broker.sh start      start it on 127.0.0.1:$BROKER_PORT and wait until it answers
#   scripts/broker.sh stop       stop the broker this script started
#   scripts/broker.sh status     say whether it runs
#
# BROKER_PORT     listening port (default 9092)
# BROKER_STORAGE  memory (default: events vanish with the broker) or persistent
#                 (a SQLite file under $BROKER_DIR, kept across restarts)
# BROKER_DIR      pid file, log and persistent storage (default data/broker)
# Integration tests do not use this script: they start their own broker on a free port.
set -euo pipefail

cd "$(dirname "$0")/.."
PORT=${BROKER_PORT:-9092}
DIR=${BROKER_DIR:-data/broker}
STORAGE=${BROKER_STORAGE:-memory}
PID_FILE="$DIR/tansu.pid"
LOG_FILE="$DIR/tansu.log"
TANSU_FEATURES="dynostore,libsql"

tansu_bin() {
  if command -v tansu >/dev/null 2>&1; then command -v tansu
  elif [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
  else return 1
  fi
}

install() {
  if tansu_bin >/dev/null; then
    echo "tansu is installed: $(tansu_bin)"
    return
  fi
  echo "installing tansu (cargo install tansu --locked --features $TANSU_FEATURES; about 10 minutes, once)..."
  cargo install tansu --locked --features "$TANSU_FEATURES"
}

running() {
  [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start() {
  if running; then
    echo "broker already running (pid $(cat "$PID_FILE")) on 127.0.0.1:$PORT"
    return
  fi
  if answers; then
    echo "something already listens on 127.0.0.1:$PORT; using it as the broker"
    return
  fi
  install
  mkdir -p "$DIR"
  case "$STORAGE" in
    memory) engine="memory://tansu/" ;;
    persistent) engine="sqlite://$DIR/tansu.db" ;;
    *) echo "BROKER_STORAGE must be memory or persistent, not $STORAGE" >&2; exit 2 ;;
  esac
  nohup "$(tansu_bin)" broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine "$engine" >"$LOG_FILE" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 100); do
    if answers; then
      echo "broker started (pid $(cat "$PID_FILE")) on 127.0.0.1:$PORT, storage $engine, log $LOG_FILE"
      return
    fi
    if ! running; then
      echo "broker exited at start; its log ($LOG_FILE):" >&2
      tail -n 20 "$LOG_FILE" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "broker did not answer on 127.0.0.1:$PORT within 10s; see $LOG_FILE" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$PID_FILE")"
    rm -f "$PID_FILE"
    echo "broker stopped"
  else
    echo "no broker started by this script is running"
  fi
}

status() {
  if running; then
    echo "broker running (pid $(cat "$PID_FILE")) on 127.0.0.1:$PORT"
  elif answers; then
    echo "a broker not started by this script answers on 127.0.0.1:$PORT"
  else
    echo "broker not running"
    return 1
  fi
}

case "${1:-status}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
