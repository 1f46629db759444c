#!/bin/sh
# remakes this record
onebit compare configs/fmnist_mlp.toml --methods fp,bc,bwn,bnn,xnor --seeds 0 1 2 --workers 2 --record records/2026-11-22_fmnist_mlp_baselines
