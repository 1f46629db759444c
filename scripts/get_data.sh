#!/usr/bin/env bash
# Find Fashion-MNIST, or install it: Debian's dataset-fashion-mnist package where apt-get works,
# the canonical download elsewhere. Usage: scripts/get_data.sh [VENV]
set -euo pipefail
venv=${1:-.venv}
onebit="$venv/bin/onebit"
if where=$("$onebit" data where fashion-mnist 2>/dev/null); then
  echo "Fashion-MNIST found in $where"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's dataset-fashion-mnist (files under /usr/share/datasets/fashion-mnist)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
else
  "$onebit" data download fashion-mnist
fi
"$onebit" data where fashion-mnist
