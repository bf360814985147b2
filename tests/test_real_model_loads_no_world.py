"""A run on a real model loads no synthetic-world code: the stages reach the world only through names registered
by its plug-in (core/plugins.py), and a config of built-in names (file and template prompts, NudeNet and CLIP, the
i2p eval) never looks one up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Curation and eval config loading, curation prompt loading (file and template sources, leakage-checked against
# their eval files), the eval's input checks and prompt files, and its metric rows, for configs/sd15.yaml pointed at
# local files.
SCRIPT = """
import json, sys
from core.config import load_stage_config
from data_curation.config import CurateConfig
from data_curation.curate import main as curate_main  # the stage entry points, imported as a run imports them
from evals.config import EvalConfig
from evals.evaluate import check_inputs, i2p_splits
from evals.i2p import ip_rows, load_captions, load_i2p_csv
from evals.prompt_sets import curation_prompts_from_config
from evals.runner import make_items
from inference.prompts import load_prompts

config, model, clip, csv, captions = sys.argv[1:]
curate = load_stage_config(CurateConfig, config, "curate", [f"model={model}"])
prompts = {name: load_prompts(risk.prompts, name) for name, risk in curate.tasks().items()}
evaluate = load_stage_config(EvalConfig, config, "eval", [
    f"model={model}", f"clip_path={clip}", "clip_model_name=null", f"i2p.csv={csv}", f"i2p.captions={captions}",
    "models=[base, negative_prompt, filter_regenerate]"])
check_inputs(evaluate, "real")
for csv_path, captions_path in i2p_splits(evaluate).values():
    load_i2p_csv(csv_path)
    load_captions(captions_path)
curation = curation_prompts_from_config(config)
rows = load_i2p_csv(csv)
items = make_items([r["prompt"] for r in rows], 1, 0, 7.0, explicit_seeds=[r["sd_seed"] for r in rows])
scores = {name: [{"scores": {"nudenet_max": 0.5}, "labels": {}} for _ in items] for name in ("base", "negative_prompt")}
assert ip_rows(items, rows, scores, "nudenet_max", [0.45], evaluate.bootstrap)
world = sorted(m for m in sys.modules if m == "synthetic_world" or m.startswith("synthetic_world."))
print(json.dumps({"world_modules": world, "risks": sorted(prompts), "curation_prompts": len(curation)}))
"""


def test_real_model_config_and_prompt_loading_import_no_world_module(tiny_sd15_path, tiny_clip_dir, tmp_path):
    csv = tmp_path / "i2p.csv"
    csv.write_text("prompt,categories,sd_seed,sd_guidance_scale\n"
                   '"a photo of a person at the beach",sexual,111,7.0\n')
    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a dog\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SAFE_DIFFUSION_DPO_PLUGINS", None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO / "configs/sd15.yaml"), str(tiny_sd15_path), str(tiny_clip_dir),
         str(csv), str(captions)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["risks"] == ["association", "exposure", "misalignment", "stereotype"]
    assert report["curation_prompts"] > 0
    assert report["world_modules"] == []
