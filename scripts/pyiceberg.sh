#!/usr/bin/env bash
# PyIceberg, the independent reader the tests check the tables with (REST and SQLite catalogs): `install`
# puts pyiceberg (with pyarrow) of PyPI into its own virtual environment, once; `python` prints
# the interpreter that has it.
set -euo pipefail
VERSION=0.12.0
HOME_DIR=${PYICEBERG_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/campaign-pipeline/pyiceberg-$VERSION}
PYTHON="$HOME_DIR/bin/python"

case "${1:-}" in
  install)
    if [ -x "$PYTHON" ] && "$PYTHON" -c 'import pyiceberg, pyarrow, sqlalchemy' 2>/dev/null; then exit 0; fi
    echo "installing pyiceberg $VERSION with pyarrow (PyPI) into $HOME_DIR"
    python3 -m venv "$HOME_DIR"
    "$HOME_DIR/bin/pip" install --quiet --disable-pip-version-check "pyiceberg[pyarrow,sql-sqlite]==$VERSION"
    "$PYTHON" -c 'import pyiceberg, pyarrow; print("pyiceberg", pyiceberg.__version__, "pyarrow", pyarrow.__version__)'
    ;;
  python)
    echo "$PYTHON"
    ;;
  *)
    echo "usage: $0 install|python" >&2
    exit 2
    ;;
esac
