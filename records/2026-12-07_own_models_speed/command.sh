#!/bin/sh
# remakes this record (ratios are measured in one run; on an otherwise idle machine for stable figures)
cd "$(dirname "$0")/../.." && .venv/bin/python benchmarks/bench_own_models.py --threads 1 --batches 1 64 --repeats 10 --out records/2026-12-07_own_models_speed/speed.json
