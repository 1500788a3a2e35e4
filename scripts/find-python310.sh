#!/usr/bin/env bash
# Print the path of a Python 3.10 interpreter (tpu_mlir 1.30.2 needs exactly 3.10), or explain.
set -u
try() { [ -x "$1" ] && "$1" -c 'import sys, venv; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$1"; exit 0; }; }
[ -n "${PYTHON310:-}" ] && try "$PYTHON310"
for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10; do try "$p"; done
command -v python3.10 >/dev/null 2>&1 && try "$(command -v python3.10)"
command -v uv >/dev/null 2>&1 && p="$(uv python find 3.10 2>/dev/null)" && try "$p"
for p in /usr/bin/python3.10 /usr/local/bin/python3.10; do try "$p"; done
cat >&2 <<'MSG'
error: duotpu needs Python 3.10 exactly (the compiler wheel tpu_mlir==1.30.2 supports only 3.10),
and none was found (looked in $PYTHON310, ~/.pyenv/versions/3.10.*, python3.10 on PATH,
`uv python find 3.10`, /usr/bin). Install one, e.g. `pyenv install 3.10` or `uv python install 3.10`,
or point PYTHON310=/path/to/python3.10 at it, then run make again.
MSG
exit 1
