#!/bin/sh
# remakes this record
onebit compare configs/mnist_mlp_lab.toml --methods fp,bc,bwn,lab --seeds 0 1 --workers 1 --set train.threads=1 --out runs --record records/2026-12-07_mnist_mlp_lab_50ep
