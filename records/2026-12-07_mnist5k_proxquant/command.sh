#!/bin/sh
# remakes this record
onebit compare configs/mnist_mlp_lab.toml --methods fp,bc,proxquant,pc,bnn++ --seeds 0 1 2 --workers 1 --set data.max_train=5000 --set train.epochs=10 --set train.threads=1 --out runs/mnist5k --record records/2026-12-07_mnist5k_proxquant
