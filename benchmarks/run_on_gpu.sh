#!/usr/bin/env bash
# One planned bench call on the lent GPU machine (no network): install the carried wheels, run one
# slice of `make bench`, leave the JSON and the log in $OUT. Usage: benchmarks/run_on_gpu.sh SLICE [key=value ...]
#   sd15     SD1.5 training sweep + generation (one H100)
#   sdxl     SDXL training sweep + generation (one H100)
#   scaling  accelerate launch on 1, 2, 4 GPUs (nvidia-h200-x4)
#   demo     wall time of make demo's stages on the GPU
set -uo pipefail
slice=${1:?slice: sd15 | sdxl | scaling | demo}; shift
source benchmarks/gpu_env.sh
OUT=${OUT:-/tmp/bench-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv
budget=${BENCH_SECONDS:-520}  # stop before the call's limit; the JSON is saved after every point
common=(work_dir=/tmp/bench-work "results_dir=$OUT" "tag=$slice")
case "$slice" in
  sd15) args=("archs=[sd15]" "parts=[train, generation]") ;;
  sdxl) args=("archs=[sdxl]" "parts=[train, generation]" log_every=4 timed_intervals=2 generation.timed_batches=2) ;;
  scaling) args=("parts=[scaling]" log_every=5 timed_intervals=3) ;;
  demo)
    # Per-stage overrides: CURATE_ARGS, TRAIN_ARGS, EVAL_ARGS ("key=value ..."). PROFILE=1 runs each stage
    # under cProfile and leaves the top functions (by own time and cumulative) in $OUT/profile-<stage>.txt.
    for stage in data_curation.curate training.train evals.evaluate; do
      case $stage in
        data_curation.curate) extra=${CURATE_ARGS:-} ;;
        training.train) extra=${TRAIN_ARGS:-} ;;
        *) extra=${EVAL_ARGS:-} ;;
      esac
      runner=(python3 -m "$stage")
      [ -n "${PROFILE:-}" ] && runner=(python3 -m cProfile -o "$OUT/$stage.prof" -m "$stage")
      start=$SECONDS
      # shellcheck disable=SC2086  # extra is a list of key=value words
      timeout "$budget" "${runner[@]}" --config configs/demo.yaml $extra 2>&1 | tail -5
      echo "[demo] $stage rc=${PIPESTATUS[0]} wall_s=$((SECONDS - start)) args: $extra" | tee -a "$OUT/demo_times.txt"
      if [ -n "${PROFILE:-}" ] && [ -f "$OUT/$stage.prof" ]; then
        python3 -c "import pstats,sys; s=pstats.Stats('$OUT/$stage.prof', stream=sys.stdout); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumulative').print_stats(45)" > "$OUT/profile-$stage.txt"
        rm -f "$OUT/$stage.prof"
      fi
    done
    for f in runs/demo/preference_set/curation_report.json runs/demo/lora/training_summary.json runs/demo/eval/summary.json; do
      [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
    exit 0 ;;
  *) echo "unknown slice $slice"; exit 2 ;;
esac
timeout "$budget" python3 -m benchmarks.bench --config configs/bench.yaml "${common[@]}" "${args[@]}" "$@" 2>&1 \
  | grep -v -E "it/s\]|s/it\]|Warning|warn\(" | tee "$OUT/log-$slice.txt"
exit "${PIPESTATUS[0]}"
