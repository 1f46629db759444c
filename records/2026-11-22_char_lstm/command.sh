#!/bin/sh
# remakes this record
onebit compare configs/char_lstm.toml --methods fp,bc,bwn,lab --seeds 0 1 2 --workers 2 --out runs --record records/2026-11-22_char_lstm
