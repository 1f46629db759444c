#!/usr/bin/env bash
# Train the Fashion-MNIST MLP with Larq for fp, bc and bnn over seeds 0 1 2 (two single-thread
# runs side by side, about 45 min on a 2-core machine) and write a record folder:
#   ONEBIT_DATA=... benchmarks/larq/record.sh [records/<date>_fmnist_mlp_larq]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-records/$(date +%F)_fmnist_mlp_larq}
bash benchmarks/larq/setup.sh > /dev/null
py=benchmarks/larq/.venv/bin/python
mkdir -p "$out/runs"
for m in bc bnn fp; do for s in 0 1 2; do echo "$m $s"; done; done |
  TF_CPP_MIN_LOG_LEVEL=2 xargs -P 2 -L 1 sh -c \
    "$py benchmarks/larq/fmnist_mlp.py --method \$0 --seed \$1 --threads 1 --out $out/runs/\$0_\$1.json > /dev/null"
$py benchmarks/larq/fmnist_mlp.py --summarize "$out"/runs/*.json > "$out/larq_table.md"
printf "#!/bin/sh\n# remakes this record (Larq side)\nbenchmarks/larq/record.sh %s\n" "$out" > "$out/command.sh"
cat "$out/larq_table.md"
