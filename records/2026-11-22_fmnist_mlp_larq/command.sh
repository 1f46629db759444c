#!/bin/sh
# remakes this record (Larq side)
benchmarks/larq/record.sh records/2026-11-22_fmnist_mlp_larq 0 1 2 3 4 5
