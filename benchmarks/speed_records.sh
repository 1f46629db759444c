#!/usr/bin/env bash
# Remake the speed records the README quotes, on an otherwise idle machine:
#   benchmarks/speed_records.sh [records/<date>_speed]
# Each figure is a ratio measured in the same run (onebit against torch fp32 / Larq Compute Engine).
set -euo pipefail
cd "$(dirname "$0")/.."
#   benchmarks/speed_records.sh OUT --models-only FROM
# remakes only the packed models' tables (bench_models, bench_own_models) and copies the kernel,
# LCE, Larq and training-step measurements from the earlier record FROM, unchanged (for a change
# that touches the runtime but not those kernels; the copied files keep FROM's provenance).
out=${1:-records/$(date +%F)_speed}
py=.venv/bin/python
mkdir -p "$out"
if [ "${2:-}" = "--models-only" ]; then
  from=${3:?give the record to copy the other measurements from}
  for f in train_step.json kernels.json xnor_limit.json lce_conv.json epoch_time.json; do
    if [ -f "$from/$f" ]; then cp "$from/$f" "$out/$f"; fi
  done
  printf "%s\n" "kernels, XNOR limit, LCE, Larq epoch time and training step copied from $from" > "$out/COPIED"
else
$py benchmarks/bench_train_step.py --threads 2 --steps 60 --rounds 6 --out "$out/train_step.json"
$py benchmarks/bench_kernels.py --rounds 9 --threads 1,2 --out "$out/kernels.json" > /dev/null
# the XNOR GEMM on panels laid out at load against its limit kernel, M = 1..256, 1 and 2 threads
$py benchmarks/bench_xnor_limit.py --blocks 30 --out "$out/xnor_limit.json"
fi
# each packed model against torch fp32 / bf16 and onnxruntime fp32 / int8, batch 1, 16, 64
$py benchmarks/bench_models.py --repeats 20 --batches 1 16 64 --threads 1 2 --out "$out/models.json"
# batch 256 (the upper end of the issue), one thread, fewer repeats: its own table
$py benchmarks/bench_models.py --repeats 6 --batches 256 --threads 1 --out "$out/models_b256.json"
# models written outside onebit (pytorchcv ResNet-20, a Hugging Face BERT), the same baselines
$py benchmarks/bench_own_models.py --threads 1 2 --batches 1 16 64 --out "$out/own_models/speed.json"
if [ "${2:-}" != "--models-only" ]; then
bash benchmarks/lce/setup.sh > /dev/null
$py benchmarks/lce/compare_conv.py --out "$out/lce_conv.json" > /dev/null
fi
# seconds per epoch of the Fashion-MNIST MLP recipe, onebit beside Larq, when the data is found
if [ "${2:-}" != "--models-only" ] && fm=$(.venv/bin/onebit data where fashion-mnist 2> /dev/null); then
  # the Larq script reads the folder onebit found (it does not search onebit's places itself)
  export ONEBIT_DATA=${ONEBIT_DATA:-$(dirname "$fm")}
  bash benchmarks/larq/setup.sh > /dev/null
  $py benchmarks/larq/epoch_time.py --out "$out/epoch_time.json"
fi
$py benchmarks/speed_table.py "$out" > "$out/README.md"
printf "#!/bin/sh\n# remakes this record on an otherwise idle machine\nbenchmarks/speed_records.sh %s\n" "${*:-$out}" > "$out/command.sh"
cat "$out/README.md"
