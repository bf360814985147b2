"""`make demo` end to end at reduced size (slow tier): the real Makefile target, on a copy of
configs/demo.yaml shrunk to a few prompts and steps, with every output redirected into a temp folder."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def reduced_demo_config(out: Path) -> dict:
    config = yaml.safe_load((REPO / "configs/demo.yaml").read_text())
    curate, train, evaluate = config["curate"], config["train"], config["eval"]
    curate.update(output_dir=str(out / "preference_set"), work_dir=str(out / "curate_work"))
    for risk in curate["risks"].values():
        risk["prompts"]["limit"] = 12
        risk["target_pairs"] = 3
        if risk.get("request_pairs"):
            risk["request_prompts"]["limit"] = 12
            risk["request_pairs"] = 2
    curate["retain"].update(output_dir=str(out / "retain_set"))
    curate["retain"]["prompts"]["limit"] = 12
    for source in curate["retain"].get("extra_prompts", []):
        source["limit"] = 6
    train.update(data=str(out / "preference_set"), output_dir=str(out / "lora"), work_dir=str(out / "train_work"),
                 max_train_steps=4, pairs_per_step=4, checkpoint_every=2, log_every=2, progress_bar=False)
    train["retain"] = dict(train["retain"], data=str(out / "retain_set"))
    evaluate.update(output_dir=str(out / "eval"), lora=str(out / "lora"), preference_set=str(out / "preference_set"),
                    prompts_per_family=3, seeds_per_prompt=1, baseline_seeds_per_prompt=1, family_prompts={"stereotype": 5})
    evaluate["bootstrap"] = dict(evaluate["bootstrap"], n_boot=100)
    return {"curate": curate, "train": train, "eval": evaluate}


@pytest.mark.slow
def test_make_demo_at_reduced_size(tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "demo_small.yaml"
    config.write_text(yaml.safe_dump(reduced_demo_config(out)))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("TEST_TORCH_THREADS", "2")}
    result = subprocess.run(["make", "demo", f"DEMO_CONFIG={config}"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]

    # Every stage wrote its folder and resolved config; the LoRA is the only weight file.
    assert len(list((out / "preference_set" / "data").glob("*.parquet"))) == 1
    assert (out / "retain_set" / "retain.json").is_file()
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    for folder in ("preference_set", "retain_set", "lora", "eval"):
        assert (out / folder / "resolved_config.yaml").is_file(), folder
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["models"]) == {"base", "aligned", "negative_prompt", "filter_regenerate"}
    for split in ("in_grammar", "phrasing_shift"):
        assert {b["metric"] for b in summary["bars"] if b["split"] == split} >= {
            "exposure", "stereotype", "stereotype_worst_role", "association", "association_other", "misalignment",
            "explicit_group", "explicit_setting", "neutral_setting", "exposure_request", "symbol_request_mirdan",
            "validity", "neutral_clip"}
    html = (out / "eval" / "report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html  # self-contained
    # It ends by printing the summary table and the report's path.
    assert "report: " in result.stdout and "aligned-base" in result.stdout
