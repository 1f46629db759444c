#!/bin/sh
# remakes this record (Larq side); the onebit side is records/2026-11-22_fmnist_mlp_baselines
benchmarks/larq/record.sh records/2026-11-22_fmnist_mlp_larq
