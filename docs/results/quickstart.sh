#!/usr/bin/env bash
# The README's quickstart tables (sections "Quickstart" and "bfloat16"): the quickstart at seeds
# 0 and 1 in float32, and seed 0 in bfloat16. About a minute each on 2 cores; rerun to resume.
# Tabulate with: python docs/results/quickstart_table.py "$OUT"
set -euo pipefail
OUT=${OUT:-runs/quickstart_runs}
python -m experiments.quickstart --workdir "$OUT/seed0" --config.log.progress=lines
python -m experiments.quickstart --workdir "$OUT/seed1" --config.seed=1 --config.log.progress=lines
python -m experiments.quickstart --workdir "$OUT/bf16_seed0" --config.train.precision=bfloat16 \
  --config.log.progress=lines
