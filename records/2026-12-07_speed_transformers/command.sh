#!/bin/sh
# remakes this record on an otherwise idle machine (from the repository root)
python benchmarks/bench_models.py --repeats 10 --batches 1 16 64 --threads 1 2 --cases ViT --out records/2026-12-07_speed_transformers/models_vit.json
python benchmarks/bench_own_models.py --threads 1 2 --batches 1 16 64 --cases "HF BERT 4x256 (seq 64)" --out records/2026-12-07_speed_transformers/own_bert.json
# the trained model: the LAB run of records/2026-12-07_char_gpt2 (its command.sh, run lab-s0), packed
onebit pack runs/char_gpt2/lab-s0 -o gpt2_lab.onebit
python benchmarks/int8_agreement.py gpt2_lab.onebit --data linux-kernel --seq-len 128 --limit 1024 --out records/2026-12-07_speed_transformers/int8_agreement_gpt2_lab.json
