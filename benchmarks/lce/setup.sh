#!/usr/bin/env bash
# Create (or reuse) the virtual environment that runs Larq Compute Engine for lce_bconv.py.
#
# LCE 0.16 ships CPython 3.11 x86_64 wheels built against numpy 1.x, so it gets its own venv,
# separate from the project's (numpy 2).  Idempotent: an existing, working venv is left alone.
#
#   bash benchmarks/lce/setup.sh                 # venv in benchmarks/lce/.venv (git-ignored)
#   LCE_VENV=/tmp/lce-venv bash benchmarks/lce/setup.sh
#   PYTHON=python3.11 bash benchmarks/lce/setup.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LCE_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

# Only the TFLite interpreter extension is used (loaded directly, without TensorFlow); the
# model is written with the flatbuffer schema code the wheel ships, which needs `flatbuffers`.
pkgs=("larq-compute-engine==0.16.*" "numpy<2" "flatbuffers")

check='import importlib.util, flatbuffers, numpy, sys
assert numpy.__version__.split(".")[0] == "1"
assert importlib.util.find_spec("larq_compute_engine") is not None'

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "LCE venv ready: $venv"
    exit 0
fi

ver="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$ver" != "3.11" ]]; then
    echo "warning: $python is Python $ver; larq-compute-engine 0.16 has wheels for 3.11 (x86_64)" \
         "- set PYTHON=python3.11 if the install fails." >&2
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${pkgs[@]}"
"$venv/bin/python" -c "$check"
echo "LCE venv ready: $venv"
