#!/usr/bin/env bash
# Copy diffusers' Diffusion-DPO example scripts (peer code, never committed) into the git-ignored
# benchmarks/stock/ for `python -m benchmarks.time_to_lora`. Nothing is downloaded: point it at a local
# diffusers checkout (a work tree or a bare git directory).
#   benchmarks/fetch_stock_example.sh /path/to/diffusers [REV]
set -euo pipefail
src=${1:?usage: benchmarks/fetch_stock_example.sh /path/to/diffusers [REV]}
rev=${2:-HEAD}
dest=$(dirname "$0")/stock
mkdir -p "$dest"
for name in train_diffusion_dpo.py train_diffusion_dpo_sdxl.py; do
  rel=examples/research_projects/diffusion_dpo/$name
  if [ -f "$src/$rel" ]; then
    cp "$src/$rel" "$dest/$name"
  else
    git --git-dir="$( [ -d "$src/.git" ] && echo "$src/.git" || echo "$src")" show "$rev:$rel" > "$dest/$name"
  fi
done
commit=$(git --git-dir="$( [ -d "$src/.git" ] && echo "$src/.git" || echo "$src")" rev-parse "$rev" 2>/dev/null || echo unknown)
echo "diffusers $commit" > "$dest/SOURCE"
echo "copied the stock examples into $dest (diffusers $commit)"
