#!/usr/bin/env bash
# Apache Superset over the pipeline's read-only PostgreSQL-wire SQL endpoint, all on 127.0.0.1.
#
#   scripts/superset.sh up                 # all of install, start and provision: the dashboard, ready
#   scripts/superset.sh install            # venv + apache-superset (pinned), once; prints the time it took
#   scripts/superset.sh start              # config, metadata DB upgrade, admin user, init, web server, wait for /health
#   scripts/superset.sh provision [--out F] # database "Campaign pipeline", virtual dataset, 5 charts, dashboard
#   scripts/superset.sh chart-data NAME_OR_ID [--rows] [--cached] [--type query]   # a chart's saved query, as JSON
#   scripts/superset.sh screenshot [--out PNG] [--campaign camp_001]...   # headless Chromium: log in, draw the dashboard
#   scripts/superset.sh load [--users 10] [--rounds 3] [--cached] [--out F.json]   # what a dashboard view costs
#   scripts/superset.sh as-a-user [--sql SQL]   # in Chromium: SQL Lab's schema browser and a query, a dataset from
#                                               # the table, a "Last day" chart by the hour saved onto the dashboard
#   scripts/superset.sh stop | status | url | python
#
# The dashboard "Campaign performance" (slug campaign-performance) has five charts, each one
# /api/v1/chart/data request per view: "Totals" (a table, one row: Impressions, Clicks, Conversions,
# Revenue, CTR %, CVR %; the percentages are ratios of sums), "CTR % per campaign", "CVR % per campaign",
# "Revenue per campaign" (lines per one-minute window) and "Top campaigns by revenue" (bars); a native
# filter on campaign_id applies to all five. `provision` is idempotent and deletes the charts on its
# dataset that earlier versions made and the list no longer has (e.g. the six big numbers Totals replaced).
#
# chart-data NAME --rows prints a JSON array, one object per row, keys = the saved query's columns:
#   window_start                 (time series) an ISO 8601 UTC string, "2026-11-27T13:24:00Z", the form
#                                `campaign-pipeline query --format json` prints (".250Z" only for sub-second parts)
#   campaign_id                  a string
#   total_impressions, total_clicks, total_conversions   JSON integers (sums of BIGINT columns)
#   total_revenue, ctr_pct, cvr_pct   JSON numbers, IEEE doubles as the endpoint computed them (shortest
#                                round-trip form, not rounded to the charts' 2 decimals); compare with a
#                                relative tolerance (1e-9): the endpoint sums in parallel, so the last digit of
#                                a sum can change between runs; ctr_pct/cvr_pct are null where the divisor is 0
#   row order                    the chart's ORDER BY (metric descending; Top campaigns: revenue descending,
#                                at most 10); sort before comparing. Without --rows: Superset's whole answer.
#   Column names per chart: Totals = the six metrics; the lines = window_start, campaign_id, one metric
#   (ctr_pct | cvr_pct | total_revenue); Top campaigns = campaign_id, total_revenue.
#
# screenshot prints ONE JSON object on stdout (progress and errors of the script itself go to stderr):
#   {"ok": bool, "url", "screenshot": PNG path | null, "render_seconds",
#    "charts": [{"id", "name", "viz_type", "state": "rendered"|"no_results"|"error"|"loading"|"pending"|"missing",
#                "error": null | text shown}, ...]    (one per chart on the page, plus "missing" ones),
#    "totals": {"total_impressions": 88206, "total_clicks": ..., "total_conversions": ...,
#               "total_revenue": 249480.62, "ctr_pct": 11.17, "cvr_pct": 19.69} | null
#               (the Totals row as drawn, parsed from its formats: integers, and 2 decimals for the rest),
#    "totals_text": {"total_impressions": {"header": "Impressions", "text": "88,206"}, ...},
#    "errors": [...]}  and with --campaign: "filter", "filtered_render_seconds", "unfiltered_totals".
#   Exit status 1 when a chart shows an error, a chart is missing or never finished (ok=false), else 0.
#
# load: each of N users logs in through /login/ with its own session; one view = GET the dashboard page,
#   GET /api/v1/dashboard/<id>, .../charts and .../datasets (in parallel), then POST /api/v1/chart/data
#   for every chart with its saved query_context, up to 6 at once per user (a browser's limit), with
#   force=true (the SQL endpoint answers every call). All users start each round together; R rounds.
#   Prints a markdown table (users, rounds, views, view time p50/p95, p95 against one user's, max, chart-data calls and their
#   p50/p95, cache hits, errors) for 1 user and for N users; --cached adds a second table without force,
#   after one view that fills the cache (entries live SUPERSET_DATA_CACHE_SECONDS, 30 s by default: the
#   "cache hits" column shows how many calls the cache answered). Percentiles are nearest-rank. Logins
#   and reading the saved queries are not timed. Exit 1 if any request failed. The client shares the
#   machine with Superset and the endpoint: its threads cost CPU too.
#
# Environment:
#   SUPERSET_HOME            state folder (venv, superset_config.py, secret, SQLite metadata DB, logs, pid)
#                            default: $PWD/.superset
#   SUPERSET_VENV            the virtual environment, installed once per machine:
#                            default ${XDG_CACHE_HOME:-$HOME/.cache}/campaign-pipeline/superset-6.1.0
#   SUPERSET_HOST / _PORT    default 127.0.0.1 / 8088
#   SUPERSET_ADMIN_USER / SUPERSET_ADMIN_PASSWORD   required by start, provision, chart-data, screenshot, load
#   SUPERSET_SECRET_KEY      default: generated once into $SUPERSET_HOME/secret_key
#   SUPERSET_METADATA_URI    metadata DB, default sqlite:///$SUPERSET_HOME/superset.db (e.g. postgresql+psycopg2://...)
#   SUPERSET_WORKERS / SUPERSET_THREADS   gunicorn gthread workers and threads each (default 3 x 4)
#   SUPERSET_START_TIMEOUT   seconds to wait for /health (default 180)
#   SUPERSET_EVENT_LOG       where Superset's action log goes: db or stdout (the server log); default stdout
#                            on the SQLite metadata database (its one writer lock slows concurrent viewers), else db
#   SUPERSET_DATA_CACHE_SECONDS   how long chart results are shared between viewers (default 30; 0 = no cache)
#   CAMPAIGN_SQL_URI         provision: the SQL endpoint, e.g. postgresql+psycopg2://user:pass@127.0.0.1:5433/campaigns;
#                            default: built from CAMPAIGN_SQL_USER (campaign) and CAMPAIGN_SQL_PASSWORD, the
#                            credentials `campaign-pipeline serve` reads, on CAMPAIGN_SQL_ADDRESS (127.0.0.1:5433)
#   CAMPAIGN_SQL_SCHEMA      provision: schema of the tables (default campaigns)
#   CHROMIUM / CHROMEDRIVER  screenshot, as-a-user: the browser and its driver (default: chromium, chromedriver on PATH)
set -euo pipefail

SUPERSET_VERSION=6.1.0
# What apache-superset 6.1.0's own requirements leave out or let float to a version it can't use:
#   rich              imported by `superset` CLI (superset/cli/test_db.py) but not declared
#   flask-caching     2.3.1: from 2.4 on it passes ignore_delete_many_errors to SupersetMetastoreCache,
#                     which fails app start with a TypeError
#   cachetools        imported by superset/db_engine_specs/aws_iam.py (PostgreSQL/MySQL/Redshift specs)
#   psycopg2-binary   the PostgreSQL driver (the SQL endpoint, optionally the metadata DB)
PINS=(
  "rich==15.0.0"
  "cachetools==8.0.2"
  "flask-caching==2.3.1"
  "psycopg2-binary==2.9.13"
)

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SUPERSET_HOME=$(realpath -m "${SUPERSET_HOME:-$PWD/.superset}")
VENV=$(realpath -m "${SUPERSET_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/campaign-pipeline/superset-$SUPERSET_VERSION}")
PY="$VENV/bin/python"
HOST=${SUPERSET_HOST:-127.0.0.1}
PORT=${SUPERSET_PORT:-8088}
URL="http://$HOST:$PORT"
CONFIG="$SUPERSET_HOME/superset_config.py"
PIDFILE="$SUPERSET_HOME/superset.pid"
LOGDIR="$SUPERSET_HOME/logs"
SERVER_LOG="$LOGDIR/server.log"
SETUP_LOG="$LOGDIR/setup.log"
HELPER="$SCRIPT_DIR/superset_provision.py"

# Superset reads SUPERSET_HOME as its data folder and SUPERSET_CONFIG_PATH as its config module.
export SUPERSET_HOME SUPERSET_CONFIG_PATH="$CONFIG" SUPERSET_URL="$URL"
export PYTHONUNBUFFERED=1

die() { echo "superset.sh: $*" >&2; exit 1; }

installed() {
  [ -x "$PY" ] || return 1
  "$PY" - "$SUPERSET_VERSION" "${PINS[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
want = {"apache-superset": sys.argv[1]}
for pin in sys.argv[2:]:
    name, _, v = pin.partition("==")
    want[name] = v
try:
    bad = [n for n, v in want.items() if version(n) != v]
except PackageNotFoundError:
    sys.exit(1)
sys.exit(1 if bad else 0)
EOF
}

cmd_install() {
  if installed; then
    echo "apache-superset $SUPERSET_VERSION already installed in $VENV"
    return 0
  fi
  local t0=$SECONDS
  echo "installing apache-superset $SUPERSET_VERSION (${PINS[*]}) into $VENV"
  mkdir -p "$(dirname "$VENV")"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "apache-superset 6.1 needs Python >= 3.10, found " + sys.version)'
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "apache-superset==$SUPERSET_VERSION" "${PINS[@]}"
  installed || die "the installed versions do not match apache-superset==$SUPERSET_VERSION ${PINS[*]}"
  echo "installed in $((SECONDS - t0)) s ($(du -sh "$VENV" | cut -f1) in $VENV)"
}

running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

healthy() {
  "$PY" - "$URL/health" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

need_admin_env() {
  [ -n "${SUPERSET_ADMIN_USER:-}" ] || die "SUPERSET_ADMIN_USER is not set (the Superset admin's user name)"
  [ -n "${SUPERSET_ADMIN_PASSWORD:-}" ] || die "SUPERSET_ADMIN_PASSWORD is not set (the Superset admin's password)"
}

write_config() {
  mkdir -p "$SUPERSET_HOME" "$LOGDIR"
  if [ -z "${SUPERSET_SECRET_KEY:-}" ] && [ ! -s "$SUPERSET_HOME/secret_key" ]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(48))' > "$SUPERSET_HOME/secret_key")
    echo "generated a SECRET_KEY into $SUPERSET_HOME/secret_key (keep it: it encrypts the stored DB passwords)"
  fi
  local metadata_uri=${SUPERSET_METADATA_URI:-"sqlite:///$SUPERSET_HOME/superset.db?check_same_thread=false"}
  local tmp="$CONFIG.tmp"
  (umask 077 && "$PY" - "$SUPERSET_HOME" "$metadata_uri" > "$tmp" <<'EOF'
import sys
home, uri = sys.argv[1], sys.argv[2]
print(f'''# Written by scripts/superset.sh start; rewritten at every start (edit the script, not this file).
import os

_HOME = {home!r}

# SUPERSET_SECRET_KEY from the environment, else the key generated once into SUPERSET_HOME/secret_key.
SECRET_KEY = os.environ.get("SUPERSET_SECRET_KEY") or open(os.path.join(_HOME, "secret_key")).read().strip()

SQLALCHEMY_DATABASE_URI = {uri!r}
if SQLALCHEMY_DATABASE_URI.startswith("sqlite"):
    # several gunicorn workers write the event log: wait for SQLite's lock instead of failing
    SQLALCHEMY_ENGINE_OPTIONS = {{"connect_args": {{"timeout": 30}}}}

# No FEATURE_FLAGS: native filters are always on in 6.x. CSRF stays on: the provisioning helper
# fetches a token from /api/v1/security/csrf_token/ like the web UI does.
ROW_LIMIT = 50000
SUPERSET_WEBSERVER_TIMEOUT = 120

# Superset's action log (who opened which dashboard or chart) is a row in the metadata database per
# request. On SQLite every worker waits for the one writer's lock, which with ten viewers costs more
# than the queries themselves: there it goes to the server log instead (SUPERSET_EVENT_LOG=db keeps
# it in the database; a PostgreSQL metadata database keeps it there by default).
_EVENT_LOG = os.environ.get("SUPERSET_EVENT_LOG") or ("stdout" if SQLALCHEMY_DATABASE_URI.startswith("sqlite") else "db")
if _EVENT_LOG == "stdout":
    from superset.utils.log import StdOutEventLogger

    EVENT_LOGGER = StdOutEventLogger()

# Relative time ranges end now, not at midnight: on a live campaign dashboard "Last day" is the last
# 24 hours, today's windows included (Superset's default, "today", would leave them all out).
DEFAULT_RELATIVE_START_TIME = "now"
DEFAULT_RELATIVE_END_TIME = "now"

# Chart results shared by the gunicorn workers for a short while, so that several people opening the
# dashboard at once cost one query per chart; SUPERSET_DATA_CACHE_SECONDS=0 turns it off. A chart's
# "force refresh" and `superset.sh chart-data` (force=true unless --cached) bypass it.
_DATA_CACHE_SECONDS = int(os.environ.get("SUPERSET_DATA_CACHE_SECONDS", "30"))
if _DATA_CACHE_SECONDS > 0:
    DATA_CACHE_CONFIG = {{
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": os.path.join(_HOME, "cache", "data"),
        "CACHE_DEFAULT_TIMEOUT": _DATA_CACHE_SECONDS,
        "CACHE_THRESHOLD": 2000,
    }}

# Superset's own cache (not chart data): the page bootstrap every dashboard view renders, and the
# table and schema lists the dataset pages ask for. Its default keeps nothing, so every view
# rebuilt the bootstrap (feature flags, engine specs, menus) from scratch.
CACHE_CONFIG = {{
    "CACHE_TYPE": "FileSystemCache",
    "CACHE_DIR": os.path.join(_HOME, "cache", "meta"),
    "CACHE_DEFAULT_TIMEOUT": 300,
    "CACHE_THRESHOLD": 2000,
}}


def FLASK_APP_MUTATOR(app):
    """Remember each database's default schema for a minute.

    Superset asks for it twice per chart-data call on a virtual dataset (for row-level security
    and the cache key), each time through a new SQLAlchemy engine: a connection, a login and
    SQLAlchemy's dialect set-up queries, on top of the chart's own query. It only changes when the
    connection is edited (the URI and extra are in the key) or, with impersonation, with the user.
    """
    import threading
    import time

    from superset.models.core import Database
    from superset.utils.core import get_username

    looked_up = Database.get_default_schema
    remembered = {{}}
    lock = threading.Lock()

    def get_default_schema(self, catalog):
        user = get_username() if self.impersonate_user else None
        key = (self.id, self.sqlalchemy_uri, self.extra, catalog, user)
        now = time.monotonic()
        with lock:
            hit = remembered.get(key)
        if hit is not None and now - hit[0] < 60:
            return hit[1]
        schema = looked_up(self, catalog)
        with lock:
            remembered[key] = (now, schema)
        return schema

    Database.get_default_schema = get_default_schema
''')
EOF
  )
  mv "$tmp" "$CONFIG"
}

run_setup() {  # $1 = what, rest = command; output to the setup log, its tail on failure
  local what=$1; shift
  local t0=$SECONDS
  echo "== $what" >> "$SETUP_LOG"
  if ! "$@" >> "$SETUP_LOG" 2>&1; then
    tail -n 40 "$SETUP_LOG" >&2
    die "$what failed (log: $SETUP_LOG)"
  fi
  echo "  $what: $((SECONDS - t0)) s"
}

cmd_start() {
  need_admin_env
  local t0=$SECONDS pid
  if pid=$(running_pid); then
    if healthy; then echo "Superset already running (pid $pid) at $URL"; return 0; fi
    die "a Superset process (pid $pid, $PIDFILE) is running but $URL/health does not answer; run '$0 stop' first"
  fi
  cmd_install
  if healthy; then die "something else already answers at $URL (not our pid file $PIDFILE); set SUPERSET_PORT"; fi
  write_config
  : > "$SETUP_LOG"
  run_setup "superset db upgrade" "$VENV/bin/superset" db upgrade
  run_setup "superset init" "$VENV/bin/superset" init
  run_setup "admin user $SUPERSET_ADMIN_USER" "$PY" "$HELPER" admin

  echo "== start $(date -u +%FT%TZ)" >> "$SERVER_LOG"
  if [ -x "$VENV/bin/gunicorn" ]; then
    local workers=${SUPERSET_WORKERS:-3} threads=${SUPERSET_THREADS:-4}
    local extra=()
    # gunicorn >= 24 opens a control socket at ~/.gunicorn/gunicorn.ctl, shared by every instance
    if "$VENV/bin/gunicorn" --help 2>/dev/null | grep -q -- '--no-control-socket'; then
      extra+=(--no-control-socket)
    fi
    echo "starting gunicorn ($workers workers x $threads threads) on $URL"
    setsid "$VENV/bin/gunicorn" \
      --bind "$HOST:$PORT" --workers "$workers" --worker-class gthread --threads "$threads" \
      --timeout 120 --graceful-timeout 20 --keep-alive 5 \
      --limit-request-line 0 --limit-request-field_size 0 ${extra[@]+"${extra[@]}"} \
      "superset.app:create_app()" >> "$SERVER_LOG" 2>&1 < /dev/null &
  else
    echo "starting 'superset run' (no gunicorn in the venv) on $URL"
    setsid "$VENV/bin/superset" run --host "$HOST" --port "$PORT" --with-threads \
      >> "$SERVER_LOG" 2>&1 < /dev/null &
  fi
  pid=$!
  echo "$pid" > "$PIDFILE"

  local timeout=${SUPERSET_START_TIMEOUT:-180} waited=0
  until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$SERVER_LOG" >&2
      rm -f "$PIDFILE"
      die "the web server exited during start (log: $SERVER_LOG)"
    fi
    if [ "$waited" -ge "$timeout" ]; then
      tail -n 40 "$SERVER_LOG" >&2
      die "$URL/health did not answer within $timeout s (pid $pid still running; log: $SERVER_LOG; '$0 stop' ends it)"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "Superset $SUPERSET_VERSION up at $URL (pid $pid, started in $((SECONDS - t0)) s; log $SERVER_LOG)"
}

cmd_stop() {
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PIDFILE"
    echo "Superset is not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "pid $pid still running after 20 s: SIGKILL to its process group" >&2
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  echo "Superset stopped (pid $pid)"
}

cmd_status() {
  local pid
  if pid=$(running_pid) && healthy; then echo "running (pid $pid) at $URL"; return 0; fi
  if pid=$(running_pid); then echo "process $pid running, $URL/health not answering"; return 1; fi
  echo "not running"
  return 3
}

need_server() {
  installed || die "Superset is not installed in $VENV: run '$0 install' and '$0 start' first"
  healthy || die "Superset does not answer at $URL/health: run '$0 start' first"
}

default_sql_uri() {
  if [ -z "${CAMPAIGN_SQL_URI:-}" ] && [ -n "${CAMPAIGN_SQL_PASSWORD:-}" ]; then
    CAMPAIGN_SQL_URI=$("$PY" -c 'import os, urllib.parse as u
q = lambda s: u.quote(s, safe="")
print("postgresql+psycopg2://%s:%s@%s/%s" % (q(os.environ.get("CAMPAIGN_SQL_USER") or "campaign"),
      q(os.environ["CAMPAIGN_SQL_PASSWORD"]), os.environ.get("CAMPAIGN_SQL_ADDRESS", "127.0.0.1:5433"),
      os.environ.get("CAMPAIGN_SQL_SCHEMA", "campaigns")))')
    export CAMPAIGN_SQL_URI
  fi
  [ -n "${CAMPAIGN_SQL_URI:-}" ] || die "set CAMPAIGN_SQL_PASSWORD (and CAMPAIGN_SQL_USER) as for 'campaign-pipeline serve', or CAMPAIGN_SQL_URI (e.g. postgresql+psycopg2://user:pass@127.0.0.1:5433/campaigns)"
}

sub=${1:-}
[ $# -gt 0 ] && shift
case "$sub" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$URL" ;;
  python) echo "$PY" ;;
  up)
    cmd_start
    default_sql_uri
    "$PY" "$HELPER" provision "$@"
    ;;
  provision)
    need_admin_env
    need_server
    default_sql_uri
    exec "$PY" "$HELPER" provision "$@"
    ;;
  chart-data|screenshot|load|as-a-user)
    need_admin_env
    need_server
    exec "$PY" "$HELPER" "$sub" "$@"
    ;;
  *)
    echo "usage: $0 up|install|start|provision [--out FILE] [--lookback-hours N]|chart-data NAME_OR_ID [--rows] [--cached] [--type query]|screenshot [--out PNG] [--campaign ID]...|load [--users N] [--rounds R] [--cached] [--out JSON]|as-a-user [--sql SQL]|stop|status|url|python" >&2
    exit 2
    ;;
esac
