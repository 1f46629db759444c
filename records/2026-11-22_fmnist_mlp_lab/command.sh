#!/bin/sh
# remakes this record
onebit compare configs/fmnist_mlp_lab.toml --methods lab,bnn++,gwt,proxquant,bnn+,pc,bc,bwn,fp --seeds 0 1 2 --workers 2 --set train.epochs=1 --out runs --record records/2026-11-22_fmnist_mlp_lab
