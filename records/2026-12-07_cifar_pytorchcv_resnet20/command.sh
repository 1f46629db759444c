#!/bin/sh
# remakes this record
onebit compare configs/cifar_pytorchcv_resnet20.toml --methods fp,bc,xnor --seeds 0 1 --workers 2 --set train.threads=1 --out runs --record records/2026-12-07_cifar_pytorchcv_resnet20
