#!/usr/bin/env bash
# One planned bench call on the lent GPU machine (no network): install the carried wheels, run one
# slice of `make bench`, leave the JSON and the log in $OUT. Usage: benchmarks/run_on_gpu.sh SLICE [key=value ...]
#   sd15     SD1.5 training sweep + generation (one H100)
#   sdxl     SDXL training sweep + generation (one H100)
#   scaling  accelerate launch on 1, 2, 4 GPUs (nvidia-h200-x4)
#   demo     wall time of make demo's stages on the GPU
#   time_to_lora  launch -> LoRA saved, stock example vs ours, SD1.5 1,536 pairs x 1: cold then warm compile caches
#                 (needs benchmarks/stock/train_diffusion_dpo.py, fetched by benchmarks/fetch_stock_example.sh)
set -uo pipefail
slice=${1:?slice: sd15 | sdxl | scaling | demo | time_to_lora}; shift
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
  time_to_lora)
    # stock cold, ours cold, stock warm, ours warm (~350-450 s on an H100), then the JSON and each run's log in $OUT.
    timeout "$budget" python3 -m benchmarks.time_to_lora work_dir=/tmp/ttl-work "results_dir=$OUT" tag=time-to-lora \
      timeout_s=240 "$@" 2>&1 | grep -v -E "it/s\]|s/it\]|Warning|warn\(" | tee "$OUT/log-time_to_lora.txt"
    rc=${PIPESTATUS[0]}
    cp /tmp/ttl-work/logs/*.log "$OUT/" 2>/dev/null
    for f in /tmp/ttl-work/outputs/ours*/training_summary.json; do
      [ -f "$f" ] && cp "$f" "$OUT/$(basename "$(dirname "$f")")-training_summary.json"
    done
    exit "$rc" ;;
  *) echo "unknown slice $slice"; exit 2 ;;
esac
timeout "$budget" python3 -m benchmarks.bench --config configs/bench.yaml "${common[@]}" "${args[@]}" "$@" 2>&1 \
  | grep -v -E "it/s\]|s/it\]|Warning|warn\(" | tee "$OUT/log-$slice.txt"
exit "${PIPESTATUS[0]}"
