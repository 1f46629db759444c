#!/usr/bin/env bash
# Make the virtual environment: torch pinned to the CPU wheel, then onebit with its dev extras.
# Usage: scripts/setup.sh [VENV]   (default .venv)
set -euo pipefail
venv=${1:-.venv}
py=${PYTHON:-python3}
torch_version=$(sed -n 's/^torch==//p' constraints.txt)
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  # A torch wheel on local disk (find-links) wins; else PyTorch's CPU index, never the multi-GB CUDA build.
  if ls /opt/wheels/torch-"$torch_version"+cpu-*.whl >/dev/null 2>&1; then
    "${pip[@]}" install --find-links /opt/wheels "torch==$torch_version"
  else
    "${pip[@]}" install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${pip[@]}" install -c constraints.txt -e ".[dev]"
# tests binarize models written outside onebit: pytorchcv without its dependencies (its
# torchvision would pull another torch; the modules the tests import need only torch)
"${pip[@]}" install -c constraints.txt --no-deps "pytorchcv==0.0.74"
