#!/bin/sh
# remakes this record (one thread; run it on an otherwise idle machine for stable figures)
cd "$(dirname "$0")/../.." && .venv/bin/python benchmarks/bench_models.py --repeats 10 --batches 1 16 64 256 --threads 1 --out records/2026-12-07_speed/models.json
.venv/bin/python benchmarks/bench_models.py --cases vit --repeats 10 --batches 1 16 64 256 --threads 1 --out records/2026-12-07_speed/models_vit.json
