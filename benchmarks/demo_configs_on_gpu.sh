#!/usr/bin/env bash
# On the lent GPU machine: the whole demo pipeline (curate, train, eval) for each config given, in turn, with each
# stage's wall time, every bar per eval split (benchmarks/print_bars.py) and the summaries left in $OUT.
# Usage (device tool, carrying .whl): bash benchmarks/demo_configs_on_gpu.sh configs/demo.yaml [configs/other.yaml ...]
#   STAGES="training.train evals.evaluate" skips curation (a carried or earlier run's set); EXTRA_<STAGE> args.
set -uo pipefail
source benchmarks/gpu_env.sh
OUT=${OUT:-/tmp/demo-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
for config in "$@"; do
  name=$(basename "$config" .yaml)
  start_all=$SECONDS
  for stage in ${STAGES:-data_curation.curate training.train evals.evaluate}; do
    s=$SECONDS
    python3 -m "$stage" --config "$config" > "$OUT/$name-$stage.log" 2>&1
    rc=$?
    echo "[demo] $name $stage rc=$rc wall_s=$((SECONDS - s))" | tee -a "$OUT/demo_times.txt"
    [ $rc -ne 0 ] && { tail -5 "$OUT/$name-$stage.log"; break; }
  done
  echo "[demo] $name total wall_s=$((SECONDS - start_all))" | tee -a "$OUT/demo_times.txt"
  grep "^\[curate\]" "$OUT/$name-data_curation.curate.log" 2>/dev/null | tail -12
  if [ -f "runs/$name/eval/summary.json" ]; then
    cp "runs/$name/eval/summary.json" "$OUT/$name-summary.json"
    python3 -m benchmarks.print_bars "$name" "runs/$name/eval/summary.json" | tee -a "$OUT/bars.txt"
  fi
  [ -f "runs/$name/preference_set/curation_report.json" ] && cp "runs/$name/preference_set/curation_report.json" "$OUT/$name-curation_report.json"
done
