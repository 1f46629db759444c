#!/bin/sh
# remakes this record
onebit compare configs/cifar_cnn_iterative.toml --seeds 0 1 2 --workers 2 --methods fp,iterative-all,iterative,iterative-reverse,iterative-random,iterative-sens-asc,iterative-sens-desc --out runs --record records/2026-11-22_cifar_cnn_iterative
