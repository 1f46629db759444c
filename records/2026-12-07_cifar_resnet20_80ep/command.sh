#!/bin/sh
# remakes this record
onebit compare configs/cifar_resnet20_fast.toml --methods fp --seeds 0 --workers 1 --set train.threads=1 --set train.epochs=80 --out runs80 --record records/2026-12-07_cifar_resnet20_80ep
