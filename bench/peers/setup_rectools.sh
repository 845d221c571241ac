#!/usr/bin/env bash
# Make (or reuse) bench/peers/.venv-rectools, the RecTools peer's own virtualenv: RecTools 0.19 needs numpy<2,
# so it cannot share the project's environment. Re-running reuses a valid venv and installs nothing new.
#   bash bench/peers/setup_rectools.sh            # PYTHON=python3.11 and RECTOOLS_VENV=DIR override the defaults
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${RECTOOLS_VENV:-$here/.venv-rectools}"
requirements="$here/requirements-rectools.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
check='import pyarrow, pytorch_lightning, rectools, torch; from rectools.models import SASRecModel, BERT4RecModel'

if ! "${PYTHON:-python3}" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))'; then
    echo "error: ${PYTHON:-python3} is not Python 3.11 or 3.12 (the pins in $requirements); set PYTHON=python3.11." >&2
    exit 2
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "reusing $venv"
    exit 0
fi
if ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    rm -rf "$venv"
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q torch==2.13.0  # first: the CPU wheel; a bare torch requirement pulls CUDA
"$venv/bin/python" -m pip install -q -r "$requirements"
"$venv/bin/python" -c "$check"
echo "$want" > "$stamp"
echo "ready: $venv ($("$venv/bin/python" -c 'import rectools, torch; print("rectools", rectools.__version__, "torch", torch.__version__)'))"
