#!/bin/sh
# remakes this record on an otherwise idle machine (ONEBIT_DATA pointing at the datasets)
benchmarks/speed_records.sh records/2026-11-22_speed
