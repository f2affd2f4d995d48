#!/usr/bin/env bash
# The demo on the embedded default: a local tansu broker, the SQLite catalog and a local
# warehouse under ./data, synthetic campaign traffic with some malformed and late events.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked
bin="$CARGO_TARGET_DIR/debug/campaign-pipeline"

scripts/broker.sh start
"$bin" check
"$bin" setup
"$bin" generate --count "${DEMO_EVENTS:-100000}" --campaigns 10 \
  --invalid-ratio 0.02 --late-ratio 0.02 --truth data/truth.json

cat <<'TXT'

The topic campaign_events now holds the demo traffic and data/truth.json what the tables
must end up holding. Processing it into the Iceberg tables (`campaign-pipeline run`) lands
with the stream-core issue; until then the demo stops here.
The broker keeps running (in memory): stop it with scripts/broker.sh stop.
TXT
