#!/bin/sh
# remakes this record on an otherwise idle machine (about 30 minutes; needs bash benchmarks/larq/setup.sh and ONEBIT_DATA)
out=records/2026-11-22_fmnist_mlp_epoch_time_native
.venv/bin/python benchmarks/bench_gemm.py --threads 1,2 --rounds 7 --out $out/gemm.json
.venv/bin/python benchmarks/bench_train_step.py --threads 2 --steps 80 --rounds 8 --out $out/train_step.json
.venv/bin/python benchmarks/larq/epoch_time.py --threads 2 --repeats 4 --libs onebit,onebit_torch_gemm,larq --out $out/epoch_time.json
