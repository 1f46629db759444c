#!/bin/sh
# remakes this record (one thread; the ratios are what matters, the machine was shared)
.venv/bin/python benchmarks/bench_epoch_time.py --threads 1 --steps 6 --rounds 4 --warmup 2 --out records/2026-12-07_epoch_time_resnet20/epoch_time.json
