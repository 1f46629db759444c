#!/bin/sh
# remakes this record
onebit compare configs/mnist_mlp_iterative_paper.toml --methods fp,iterative-all,iterative,iterative-reverse,iterative-random,iterative-sens-asc,iterative-sens-desc --seeds 0 1 2 --workers 1 --set train.threads=1 --record records/2026-12-07_mnist_mlp_iterative_450ep
