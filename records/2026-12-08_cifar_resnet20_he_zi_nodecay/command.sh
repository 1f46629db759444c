#!/bin/sh
# remakes this record
onebit compare configs/cifar_resnet20_fast.toml --methods fp --seeds 0 --workers 1 --set train.threads=1 --set 'model.init="he"' --set model.zero_init_residual=true --set train.decay_norm=false --out runs_he --record records/2026-12-08_cifar_resnet20_he_zi_nodecay
