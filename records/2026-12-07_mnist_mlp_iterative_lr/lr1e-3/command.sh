#!/bin/sh
# remakes this record
onebit compare configs/mnist_mlp_iterative.toml --methods fp,iterative-all --seeds 0 --workers 1 --set train.lr=1e-3 --set train.epochs=30 --set train.threads=1 --no-plots --out /tmp/lrsweep/lr1e-3 --record records/2026-12-07_mnist_mlp_iterative_lr/lr1e-3
