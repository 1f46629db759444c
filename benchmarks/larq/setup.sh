#!/usr/bin/env bash
# Create (or reuse) the virtual environment that runs Larq for fmnist_mlp.py: TensorFlow 2.15
# (CPU) with its built-in Keras 2, which Larq 0.14 needs, and numpy < 2.  About 600 MB; separate
# from the project's environment (numpy 2, torch).  Idempotent.
#
#   bash benchmarks/larq/setup.sh        # venv in benchmarks/larq/.venv (git-ignored)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${LARQ_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
check='import larq, tensorflow, numpy; assert numpy.__version__.startswith("1.")'
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
    echo "Larq venv ready: $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install -q "tensorflow-cpu==2.15.1" "larq==0.14.0" "numpy<2"
"$venv/bin/python" -c "$check"
echo "Larq venv ready: $venv"
