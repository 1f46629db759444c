#!/bin/sh
# remakes this record on an otherwise idle machine
benchmarks/speed_records.sh records/2026-12-07_speed_steps --models-only records/2026-12-07_speed
