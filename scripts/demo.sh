#!/usr/bin/env bash
# The demo on the embedded default: a local tansu broker, the SQLite catalog and a local
# warehouse under ./data, synthetic campaign traffic with some malformed and late events,
# processed into the Iceberg tables exactly once and read back with SQL.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked
bin="$CARGO_TARGET_DIR/debug/campaign-pipeline"

# Start from a clean slate: a fresh in-memory broker and empty tables.
scripts/broker.sh stop >/dev/null || true
rm -rf data
scripts/broker.sh start

echo; echo "== check: configuration and both SQL files"
"$bin" check
echo; echo "== setup: topics and Iceberg tables"
"$bin" setup
echo; echo "== generate: campaign traffic, 2% malformed, 5% out of order, 1% late"
"$bin" generate --count "${DEMO_EVENTS:-100000}" --campaigns 10 \
  --invalid-ratio 0.02 --out-of-order-ratio 0.05 --late-ratio 0.01 --truth data/truth.json
echo; echo "== collect: an app posts two events over HTTP; the answer comes once Kafka has them"
export CAMPAIGN_COLLECTOR_TOKENS=${CAMPAIGN_COLLECTOR_TOKENS:-demo-app-token}
collector_listen=${COLLECTOR_LISTEN:-127.0.0.1:8090}
"$bin" collect --listen "$collector_listen" &
collector=$!
trap 'kill "$collector" 2>/dev/null || true' EXIT
until curl -fsS "http://$collector_listen/healthz" >/dev/null 2>&1; do
  kill -0 "$collector" 2>/dev/null || exit 1 # it stopped at start, saying why above
  sleep 0.2
done
now=$(date -u +%Y-%m-%dT%H:%M:%S.000Z)
for n in 1 2; do
  printf '{"event_id":"app-%s","campaign_id":"campaign_001","event_type":"click","user_id":"app_user","platform":"web","timestamp":"%s","revenue":0,"country":"DE","device_type":"desktop"}\n' "$n" "$now"
done | curl -sS "http://$collector_listen/v1/events" -H "Authorization: Bearer $CAMPAIGN_COLLECTOR_TOKENS" \
  -H 'Content-Type: application/x-ndjson' --data-binary @-
echo
kill -TERM "$collector"
wait "$collector" || true
trap - EXIT
echo; echo "== run --until-caught-up: Kafka -> parsing SQL -> Iceberg + windows + dead letter queue"
"$bin" run --until-caught-up
echo; echo "== the last two closed windows per campaign, from the Iceberg table campaign_metrics"
"$bin" query "SELECT campaign_id, window_start, impressions, clicks, conversions,
    round(revenue, 2) AS revenue, round(ctr_percent, 2) AS ctr_percent,
    round(cvr_percent, 2) AS cvr_percent
  FROM (SELECT *, row_number() OVER (PARTITION BY campaign_id ORDER BY window_start DESC) AS n
        FROM campaign_metrics)
  WHERE n <= 2 ORDER BY campaign_id, window_start"
echo; echo "== the app's events, from the Iceberg table campaign_events"
"$bin" query "SELECT event_id, campaign_id, event_type, \"timestamp\" FROM campaign_events
  WHERE event_id LIKE 'app-%' ORDER BY event_id"
echo; echo "== per-campaign totals, from the Iceberg table campaign_events"
"$bin" query "SELECT campaign_id,
    count(*) FILTER (WHERE event_type = 'impression') AS impressions,
    count(*) FILTER (WHERE event_type = 'click') AS clicks,
    count(*) FILTER (WHERE event_type = 'conversion') AS conversions,
    round(sum(revenue), 2) AS revenue
  FROM campaign_events GROUP BY campaign_id ORDER BY campaign_id"
echo; echo "== dlq stats: the dead letter queue by category, error pattern, partition and minute"
"$bin" dlq stats
echo; echo "== maintain: compaction, manifest merging, snapshot expiry, cleanup (run does it every minute)"
"$bin" maintain

cat <<'TXT'

Above: the last closed one-minute windows per campaign (CTR %, CVR %, revenue) and the
per-campaign totals, both read back from the Iceberg tables, and the dead letter queue by
category and error pattern, late events included (`dlq export` writes it to a file, `dlq replay`
sends fixed events back). The newest window stays open in the state
checkpoint until the watermark passes it (or `run --until-caught-up --flush-open-windows`).
Run the pipeline again and nothing is added; generate more and only the new events are.
data/truth.json holds what the generator sent.
The broker keeps running (in memory): stop it with scripts/broker.sh stop.
TXT

if [ -n "${DEMO_NO_DASHBOARD:-}" ]; then
  exit 0
fi
listen=${DASHBOARD_LISTEN:-127.0.0.1:8080}
sql_listen=${SQL_LISTEN:-127.0.0.1:5433}
export CAMPAIGN_SQL_USER=${CAMPAIGN_SQL_USER:-campaign} CAMPAIGN_SQL_PASSWORD=${CAMPAIGN_SQL_PASSWORD:-demo}
echo; echo "== dashboard: open http://$listen/ in a browser (Ctrl-C stops it)"
echo "   (for live lag and dead-letter counts, run the pipeline with: $bin run --dashboard)"
echo "== SQL for BI tools: psql postgresql://$CAMPAIGN_SQL_USER:$CAMPAIGN_SQL_PASSWORD@$sql_listen/campaigns"
echo "   Superset's Campaign performance dashboard on http://127.0.0.1:8088/ (in another terminal):"
echo "   SUPERSET_ADMIN_USER=admin SUPERSET_ADMIN_PASSWORD=admin CAMPAIGN_SQL_PASSWORD=$CAMPAIGN_SQL_PASSWORD CAMPAIGN_SQL_ADDRESS=$sql_listen scripts/superset.sh up"
exec "$bin" serve --listen "$listen" --sql-listen "$sql_listen"
