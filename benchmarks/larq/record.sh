#!/usr/bin/env bash
# Train the Fashion-MNIST MLP with Larq for fp, bc and bnn and write (or extend) a record folder:
#   ONEBIT_DATA=... benchmarks/larq/record.sh [records/<date>_fmnist_mlp_larq] [SEED ...]
# Seeds default to 0 1 2. JOBS (default 2) single-thread runs go side by side: about 45 min for
# 3 seeds on a 2-core machine. Runs already in the folder are kept, so more seeds extend it.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-records/$(date +%F)_fmnist_mlp_larq}
shift || true
seeds=${*:-0 1 2}
bash benchmarks/larq/setup.sh > /dev/null
py=benchmarks/larq/.venv/bin/python
mkdir -p "$out/runs"
for m in fp bc bnn; do for s in $seeds; do
  [ -e "$out/runs/${m}_$s.json" ] || echo "$m $s"
done; done |
  TF_CPP_MIN_LOG_LEVEL=2 xargs -r -P "${JOBS:-2}" -L 1 sh -c \
    "$py benchmarks/larq/fmnist_mlp.py --method \$0 --seed \$1 --threads 1 --out $out/runs/\$0_\$1.json > /dev/null"
$py benchmarks/larq/fmnist_mlp.py --summarize "$out"/runs/*.json > "$out/larq_table.md"
all=$(ls "$out"/runs/*.json | sed 's/.*_\([0-9]*\)\.json/\1/' | sort -nu | tr '\n' ' ')
printf "#!/bin/sh\n# remakes this record (Larq side)\nbenchmarks/larq/record.sh %s %s\n" "$out" "${all% }" > "$out/command.sh"
cat "$out/larq_table.md"
