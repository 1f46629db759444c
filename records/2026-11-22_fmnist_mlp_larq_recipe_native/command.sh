#!/bin/sh
# remakes this record
onebit compare configs/fmnist_mlp_larq.toml --methods fp,bc,bnn --seeds 0 1 2 3 4 5 --workers 2 --out runs/native --record records/2026-11-22_fmnist_mlp_larq_recipe_native
