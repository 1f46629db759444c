#!/bin/sh
# remakes this record
onebit compare configs/cifar_resnet20_fast.toml --methods fp --seeds 0 --workers 1 --set train.threads=1 --set train.lr=0.1 --set train.weight_decay=2e-4 --out runsA --record records/2026-12-07_cifar_resnet20_lr01_wd2e-4
