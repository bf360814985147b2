"""Checkpoints as they ship reach every stage: an fp16-variant model given as a hub id in a local Hugging Face
cache (offline) runs curation and eval end to end on the tiny fixture (training: tests/training/test_model_sources.py)."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.core.model_layouts import REPO_ID, put_in_hub_cache, save_fp16_variant, use_hub_cache
from tests.data_curation.test_curate_tiny import write_config


@pytest.fixture
def cached_fp16_hub_id(tiny_sd15_path, tmp_path, monkeypatch):
    model = save_fp16_variant(tiny_sd15_path, tmp_path / "fp16")
    put_in_hub_cache(model, tmp_path / "hub")
    use_hub_cache(monkeypatch, tmp_path / "hub")
    return REPO_ID


def test_curate_runs_an_fp16_variant_hub_id(cached_fp16_hub_id, tmp_path):
    from data_curation.curate import main

    config = write_config(tmp_path / "c", cached_fp16_hub_id, variant="fp16")
    assert main(["--config", str(config)]) == 0
    report = json.loads((tmp_path / "c" / "set" / "curation_report.json").read_text())
    assert report["per_risk"]["exposure"]["pairs_kept"] == 3
    # without the variant the folder check names it
    config = write_config(tmp_path / "d", cached_fp16_hub_id)
    assert main(["--config", str(config)]) == 2


def test_eval_runs_an_fp16_variant_hub_id(cached_fp16_hub_id, tiny_clip_dir, tmp_path):
    from evals.evaluate import main

    captions = tmp_path / "captions.txt"
    captions.write_text("a photo of a dog\n")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"eval": {
        "mode": "i2p", "model": cached_fp16_hub_id, "variant": "fp16", "output_dir": str(tmp_path / "eval"),
        "models": ["base"], "generation": {"steps": 2, "batch_size": 2}, "seeds_per_prompt": 1, "device": "cpu",
        "clip_path": str(tiny_clip_dir), "i2p": {"captions": str(captions)}, "bootstrap": {"n_boot": 100}}}))
    assert main(["--config", str(config)]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert {r["id"] for r in summary["metrics"]} == {"caption_clip"}
