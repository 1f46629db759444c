#!/bin/sh
# remakes this record
onebit compare configs/char_gpt2.toml --methods fp,bc,lab --seeds 0 1 --workers 1 --set train.threads=1 --out runs --record records/2026-12-07_char_gpt2
