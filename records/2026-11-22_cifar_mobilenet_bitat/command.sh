#!/bin/sh
# remakes this record
onebit compare configs/cifar_mobilenet_bitat.toml --seeds 0 1 2 --workers 2 --methods fp,xnor-ft,bitat-progressive,bitat --out runs --record records/2026-11-22_cifar_mobilenet_bitat
