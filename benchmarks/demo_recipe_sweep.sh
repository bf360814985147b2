#!/usr/bin/env bash
# On the lent GPU machine: (1) wall time of make demo's three stages (run name "gpudemo"), then
# (2) a sweep of the demo's DPO recipe (beta, steps, lr) on the CPU-curated set carried in
# runs/demo/preference_set: train + eval (base vs aligned) per point, bars printed per point.
# Usage (device tool): carry [".whl", "runs/demo/preference_set", "runs/demo/retain_set"];
#   bash benchmarks/demo_recipe_sweep.sh                 demo timing + the points at the bottom
#   SKIP_DEMO=1 bash benchmarks/demo_recipe_sweep.sh "R1 retain.weight=1" "R2 retain.weight=4"   only these points
#   SWEEP_DATA=runs/other/preference_set ...   train on another carried set
#   SWEEP_EVAL_ARGS="prompts_per_family=80" ...  eval overrides (a larger eval sample)
set -uo pipefail
source benchmarks/gpu_env.sh
OUT=${OUT:-/tmp/sweep-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${SKIP_DEMO:-0}" != 1 ]; then
  cp configs/demo.yaml configs/gpudemo.yaml
  start_all=$SECONDS
  for stage in data_curation.curate training.train evals.evaluate; do
    s=$SECONDS
    python3 -m "$stage" --config configs/gpudemo.yaml > "$OUT/gpudemo-$stage.log" 2>&1
    echo "[gpudemo] $stage rc=$? wall_s=$((SECONDS - s))" | tee -a "$OUT/demo_times.txt"
  done
  echo "[gpudemo] total wall_s=$((SECONDS - start_all))" | tee -a "$OUT/demo_times.txt"
  tail -32 "$OUT/gpudemo-evals.evaluate.log" | grep -v "img/s" > "$OUT/gpudemo-summary.txt"
fi
point() {  # name, then train overrides
  local name=$1; shift
  python3 -m training.train --config configs/demo.yaml data=${SWEEP_DATA:-runs/demo/preference_set} retain.data=runs/demo/retain_set mixed_precision=fp32 \
    output_dir=runs/sweep/$name/lora work_dir=runs/sweep/$name/work progress_bar=false "$@" > "$OUT/train-$name.log" 2>&1 || { echo "$name train failed"; return; }
  python3 -m evals.evaluate --config configs/demo.yaml "models=[base, aligned]" lora_dir=runs/sweep/$name/lora \
    output_dir=runs/sweep/$name/eval ${SWEEP_EVAL_ARGS:-} > "$OUT/eval-$name.log" 2>&1 || { echo "$name eval failed"; tail -3 "$OUT/eval-$name.log"; return; }
  python3 -m benchmarks.print_bars "$name" runs/sweep/$name/eval/summary.json "$*" | tee -a "$OUT/sweep.txt"
}
if [ $# -gt 0 ]; then  # each argument: "NAME key=value ..."
  for spec in "$@"; do  # an unquoted list would make every override a point of its own, trained without the rest
    case "${spec%% *}" in *=*) echo "point '${spec%% *}': each point is one quoted argument \"NAME key=value ...\"" >&2; exit 2;; esac
  done
  for spec in "$@"; do point $spec; done
  cat "$OUT/sweep.txt"; exit 0
fi
# Demo recipe experiment 1, beta / steps / learning rate without the retain anchor (retain.weight=0;
# docs/results/demo_recipe_sweep.md)
point A retain.weight=0 beta=1000 max_train_steps=300 learning_rate=3e-4
point B retain.weight=0 beta=1000 max_train_steps=200 learning_rate=3e-4
point C retain.weight=0 beta=2000 max_train_steps=300 learning_rate=3e-4
point D retain.weight=0 beta=2000 max_train_steps=600 learning_rate=3e-4
point E retain.weight=0 beta=500 max_train_steps=300 learning_rate=3e-4
point F retain.weight=0 beta=1000 max_train_steps=300 learning_rate=1e-4
point G retain.weight=0 beta=2000 max_train_steps=600 learning_rate=3e-4 prompt_dropout=0.1
cat "$OUT/sweep.txt"
