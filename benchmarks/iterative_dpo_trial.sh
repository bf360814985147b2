#!/usr/bin/env bash
# On the lent GPU machine: one round of on-policy iterative DPO for the demo's stereotype pairs, mixed with
# the first round's pairs (docs/results/demo_recipe_sweep.md, experiment 13). Round 1 = the demo recipe on a carried
# CPU-curated set; round 2 = stereotype-only curation with base + round-1 LoRA (the balance schedule then rejects
# the groups the aligned model over-produces), merged with round 1's pairs, trained from the round-1 LoRA.
# Usage (device tool): carry [".whl", "runs/fbset"]; [R1_STEPS=600 R2_PAIRS=90] bash benchmarks/iterative_dpo_trial.sh [STEPS ...]
set -uo pipefail
source benchmarks/gpu_env.sh
OUT=${OUT:-/tmp/iter-out}; mkdir -p "$OUT"
SET=${SET:-runs/fbset}; R=runs/iter
common=(retain.data=$SET/retain_set mixed_precision=fp32 progress_bar=false)
bars() {  # name, eval summary
  python3 -m benchmarks.print_bars "$1" "$2" | tee -a "$OUT/iter.txt"
}
evaluate() {  # name, lora dir
  python3 -m evals.evaluate --config configs/demo.yaml "models=[base, aligned]" lora_dir=$2 output_dir=$R/$1/eval \
    > "$OUT/eval-$1.log" 2>&1 && bars "$1" $R/$1/eval/summary.json
}
s=$SECONDS
python3 -m training.train --config configs/demo.yaml data=$SET/preference_set "${common[@]}" output_dir=$R/r1/lora \
  work_dir=$R/r1/work max_train_steps=${R1_STEPS:-600} > "$OUT/train-r1.log" 2>&1 || { tail -5 "$OUT/train-r1.log"; exit 1; }
evaluate r1 $R/r1/lora
python3 -m data_curation.curate --config configs/demo.yaml lora=$R/r1/lora output_dir=$R/r2/preference_set \
  work_dir=$R/r2/work risks.exposure.target_pairs=0 risks.association.target_pairs=0 \
  risks.misalignment.target_pairs=0 risks.stereotype.target_pairs=${R2_PAIRS:-90} retain.prompts=null \
  > "$OUT/curate-r2.log" 2>&1 || { tail -5 "$OUT/curate-r2.log"; exit 1; }
grep -i -E "stereotype|pairs" "$OUT/curate-r2.log" | tail -4
python3 -m preference_sets.cli merge $SET/preference_set $R/r2/preference_set --out $R/merged --overwrite \
  > "$OUT/merge.log" 2>&1 || { tail -5 "$OUT/merge.log"; exit 1; }
for steps in "${@:-150}"; do
  python3 -m training.train --config configs/demo.yaml data=$R/merged "${common[@]}" init_lora=$R/r1/lora \
    max_train_steps=$steps lr_warmup_steps=0 output_dir=$R/r2-$steps/lora work_dir=$R/r2-$steps/work \
    > "$OUT/train-r2-$steps.log" 2>&1 || { tail -5 "$OUT/train-r2-$steps.log"; continue; }
  evaluate r2-$steps $R/r2-$steps/lora
done
echo "[iter] wall_s=$((SECONDS - s))"
