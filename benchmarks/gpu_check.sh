#!/usr/bin/env bash
# The GPU check, at most 8 minutes on one GPU:
#   benchmarks/gpu_check.sh [records/<date>_gpu_check]
#
# 1. stops at once, with one sentence and exit status 2, unless torch in .venv sees a CUDA GPU;
# 2. runs the test suite's device-parametrized tests on CUDA (pytest -m gpu; on a machine without
#    CUDA those cases are not even generated);
# 3. trains ResNet-20 on CIFAR-10 for 2 epochs with fp and bc through the CLI, once in bf16 and
#    once in fp16 (autocast and the gradient scaler), with configs/cifar_resnet20_fast.toml;
# 4. writes the record: each run's config, env (commit, torch) and metrics (accuracy, epoch times)
#    under bf16/ and fp16/, the GPU's name and versions in gpu.json, the tests' output, and
#    README.md with the table.
#
# It installs nothing beyond `make setup` (which keeps a CUDA build of torch==2.13.0 that is
# already in .venv; it would itself install the CPU build). The data is found as onebit always
# finds it: $ONEBIT_DATA, then the usual places. Exit status: 0 when every stage passed, 1 when a
# test or a training run failed (the record is written either way), 2 when it could not start.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-records/$(date -u +%F)_gpu_check}
py=.venv/bin/python
started=$(date +%s)

make setup > /dev/null || { echo "gpu_check: make setup failed; nothing was run." >&2; exit 2; }
"$py" - <<'EOF' || exit 2
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(
        f"gpu_check: torch {torch.__version__} in .venv sees no CUDA GPU "
        "(torch.cuda.is_available() is False); run this on a machine with an NVIDIA GPU and a "
        "CUDA build of torch==2.13.0 in .venv. Nothing was run."
    )
EOF
if ! .venv/bin/onebit data where cifar10 > /dev/null 2>&1; then
  echo "gpu_check: CIFAR-10 was not found; set ONEBIT_DATA to the folder holding it" \
    "(scripts/get_data.sh fetches it). Nothing was run." >&2
  exit 2
fi
mkdir -p "$out"
failed=0

# 2. the device-parametrized tests, on CUDA only (at most 180 s)
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}  # cuBLAS deterministic, as train.deterministic asks
timeout 180 "$py" -m pytest -m gpu -q -p no:cacheprovider tests > "$out/tests_gpu.txt" 2>&1
tests_rc=$?
tail -n 3 "$out/tests_gpu.txt"
[ "$tests_rc" -eq 0 ] || { echo "gpu_check: the gpu tests failed (status $tests_rc), see $out/tests_gpu.txt" >&2; failed=1; }

# 3. two epochs of fp and bc in each precision (at most 140 s each; the first decodes the images once)
runs=$(mktemp -d)
for precision in bf16 fp16; do
  timeout 140 .venv/bin/onebit train configs/cifar_resnet20_fast.toml --methods fp,bc --seeds 0 \
    --set train.epochs=2 --set train.device=cuda --set train.precision=$precision \
    --set train.threads=4 --out "$runs/$precision" --record "$out/$precision" --no-progress \
    > "$out/train_$precision.txt" 2>&1
  rc=$?
  tail -n 4 "$out/train_$precision.txt"
  [ "$rc" -eq 0 ] || { echo "gpu_check: training in $precision failed (status $rc), see $out/train_$precision.txt" >&2; failed=1; }
done
rm -rf "$runs"

# 4. the GPU, the versions and a table of every run's accuracy and epoch times
"$py" - "$out" "$tests_rc" "$(( $(date +%s) - started ))" <<'EOF'
import json
import subprocess
import sys
from pathlib import Path

import torch

out, tests_rc, seconds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"],
                        capture_output=True, text=True).stdout.strip()
gpu = {
    "gpu": torch.cuda.get_device_name(0),
    "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
    "bf16_supported": torch.cuda.is_bf16_supported(),
    "commit": commit,
    "tests_gpu_status": tests_rc,
    "seconds": seconds,
}
rows = []
for metrics in sorted(out.glob("*/runs/*/metrics.jsonl")):
    epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    cfg = json.loads((metrics.parent / "config.json").read_text())
    rows.append({
        "precision": cfg["train"]["precision"],
        "method": cfg["method"]["name"],
        "device": epochs[-1].get("device") if epochs else None,
        "epochs": len(epochs),
        "test_acc_last": epochs[-1]["test_acc"] if epochs else None,
        "train_seconds": [round(r["train_seconds"], 2) for r in epochs],
        "seconds": [round(r["seconds"], 2) for r in epochs],
    })
gpu["runs"] = rows
(out / "gpu.json").write_text(json.dumps(gpu, indent=2) + "\n")
lines = [
    f"# GPU check: {gpu['gpu']}",
    "",
    f"torch {gpu['torch']} (CUDA {gpu['cuda']}, cuDNN {gpu['cudnn']}), commit {commit}, "
    f"{seconds} s in all. `pytest -m gpu`: {'passed' if tests_rc == 0 else f'FAILED (status {tests_rc})'}"
    " (tests_gpu.txt).",
    "",
    "ResNet-20 on CIFAR-10, configs/cifar_resnet20_fast.toml at 2 epochs (a smoke test of the "
    "device path, not an accuracy record):",
    "",
    "| precision | method | device | test acc % (last) | train s per epoch | s per epoch |",
    "|---|---|---|---|---|---|",
]
for r in rows:
    acc = f"{100 * r['test_acc_last']:.2f}" if r["test_acc_last"] is not None else "-"
    lines.append(f"| {r['precision']} | {r['method']} | {r['device']} | {acc} | "
                 f"{' / '.join(map(str, r['train_seconds']))} | {' / '.join(map(str, r['seconds']))} |")
(out / "README.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
printf '#!/bin/sh\n# remakes this record on a machine with one NVIDIA GPU (at most 8 minutes)\nbenchmarks/gpu_check.sh %s\n' "$out" > "$out/command.sh"
[ "$failed" -eq 0 ] || { echo "gpu_check: FAILED; the record is in $out" >&2; exit 1; }
echo "gpu_check: passed; the record is in $out"
