#!/bin/sh
# remakes this record on an otherwise idle machine (about 15 minutes; needs bash benchmarks/larq/setup.sh)
out=records/2026-11-22_fmnist_mlp_epoch_time
.venv/bin/python benchmarks/bench_train_step.py --threads 2 --steps 60 --rounds 6 --out $out/train_step.json
.venv/bin/python benchmarks/larq/epoch_time.py --threads 2 --repeats 2 --out $out/epoch_time.json
.venv/bin/python benchmarks/larq/epoch_time.py --threads 2 --methods fp --repeats 4 --out $out/epoch_time_fp.json
