#!/usr/bin/env bash
# Copies the small result files of the CPU reproduction (run_cpu.sh) into the repository and
# regenerates the report that docs/results.md quotes. Safe while the studies still run: it
# reads finished rows only, and rerunning it refreshes everything.
set -euo pipefail
OUT=${OUT:-runs/repro_cpu}
DEST=${DEST:-docs/results/cpu_resnet20_15ep}
mkdir -p "$DEST"
workdirs=()
for workdir in "$OUT"/resnet20_15ep_seed*; do
  [ -f "$workdir/results.jsonl" ] || continue
  name=$(basename "$workdir")
  mkdir -p "$DEST/$name"
  for file in config.json plan.json results.jsonl environment.jsonl epoch_times.jsonl summary.md; do
    [ -f "$workdir/$file" ] && cp "$workdir/$file" "$DEST/$name/"
  done
  # the learning curves' source (about 200 KB a study), so they rebuild without the workdir
  [ -d "$workdir/tensorboard" ] && rm -rf "$DEST/$name/tensorboard" && \
    cp -r "$workdir/tensorboard" "$DEST/$name/"
  workdirs+=("$workdir")
done
[ ${#workdirs[@]} -gt 0 ] || { echo "no finished rows under $OUT yet" >&2; exit 1; }
python -m lottery_kd.status "${workdirs[@]}" | tee "$DEST/status.txt"
python -m lottery_kd.report "${workdirs[@]}" --out "$DEST/report"
