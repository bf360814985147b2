"""Benign downstream fine-tuning on the tiny model (the LoRA trains on, stock diffusers loads the result), and the
published attack sets in the I2P CSV schema as eval families."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from core.errors import DataError
from core.models import LORA_WEIGHT_NAME, load_pipeline
from core.output_dir import MARKER
from redteam.attack import load_config as load_attack_config
from redteam.attack import redteam
from redteam.finetune import finetune, load_config
from redteam.published import load_attack_csv
from tests.conftest import make_random_lora
from tests.redteam import fakes


def test_finetune_trains_the_lora_on_and_stock_diffusers_loads_it(tmp_path, tiny_sd15_path):
    lora = make_random_lora(tiny_sd15_path, tmp_path / "lora")
    (tmp_path / "lora" / "training_summary.json").write_text(json.dumps({"steps": 3, "pairs_per_step": 4}))
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({"redteam": {
        "model": str(tiny_sd15_path), "suite": fakes.SUITE, "device": "cpu",
        "generation": {"sampler": "ddim", "steps": 2, "guidance": 1.5, "batch_size": 8},
        "finetune": {"lora": str(lora), "output_dir": str(tmp_path / "out"), "batch_size": 4,
                     "learning_rate": 1e-2, "drop_labels": ["beach"],
                     "prompts": {"source": "templates", "templates": ["a {x} in a park", "a {x} at the beach"],
                                 "slots": {"x": ["cat", "dog", "person"]}}},
    }}))
    cfg = load_config(str(config), [])
    summary = finetune(cfg, progress=False)
    # default steps: the DPO run's 3 x 4 = 12 pair visits as image visits, 4 images per step
    assert summary["steps"] == 3 and summary["dpo_pair_visits"] == 12
    # the fake reader flags every beach prompt: those images are dropped from the benign data
    assert summary["benign_images"] == 3 and summary["dropped_images"] == 3
    out = tmp_path / "out"
    assert (out / MARKER).is_file() and (out / "resolved_config.yaml").is_file()
    before, after = load_file(str(lora / LORA_WEIGHT_NAME)), load_file(str(out / LORA_WEIGHT_NAME))
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the LoRA moved
    pipe = load_pipeline(tiny_sd15_path)
    pipe.load_lora_weights(str(out))  # stock loading


def test_finetune_trains_the_text_encoder_half_on_and_saves_it(tmp_path, tiny_sd15_path):
    lora = make_random_lora(tiny_sd15_path, tmp_path / "lora", text_encoder_modules=("q_proj", "v_proj"))
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({"redteam": {
        "model": str(tiny_sd15_path), "suite": fakes.SUITE, "device": "cpu",
        "generation": {"sampler": "ddim", "steps": 2, "guidance": 1.5, "batch_size": 8},
        "finetune": {"lora": str(lora), "output_dir": str(tmp_path / "out"), "batch_size": 4, "steps": 2,
                     "learning_rate": 1e-2, "prompts": {"source": "templates", "templates": ["a {x} in a park"],
                                                        "slots": {"x": ["cat", "dog"]}}},
    }}))
    summary = finetune(load_config(str(config), []), progress=False)
    assert summary["text_encoder_trained"]
    before, after = load_file(str(lora / LORA_WEIGHT_NAME)), load_file(str(tmp_path / "out" / LORA_WEIGHT_NAME))
    assert set(before) == set(after)  # both halves are saved, under the same keys
    text_keys = [k for k in before if k.startswith("text_encoder.")]
    assert text_keys and any(not torch.equal(before[k], after[k]) for k in text_keys)  # the encoder half moved
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("unet."))
    pipe = load_pipeline(tiny_sd15_path)
    pipe.load_lora_weights(str(tmp_path / "out"))  # stock loading, both halves


def _csv(path, rows, columns=("prompt", "categories", "sd_seed", "sd_guidance_scale")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def test_attack_csv_follows_the_i2p_schema(tmp_path):
    path = _csv(tmp_path / "rab.csv", [["a person at the beach", "sexual", "12", "7.5"],
                                       ["a cat", "", "3.0", "5"]])
    rows = load_attack_csv(path)
    assert rows == [
        {"prompt": "a person at the beach", "categories": ["sexual"], "sd_seed": 12, "sd_guidance_scale": 7.5},
        {"prompt": "a cat", "categories": ["uncategorised"], "sd_seed": 3, "sd_guidance_scale": 5.0}]
    assert len(load_attack_csv(path, max_prompts=1)) == 1
    with pytest.raises(DataError, match="missing required column"):
        load_attack_csv(_csv(tmp_path / "bad.csv", [["x", "1"]], columns=("prompt", "sd_seed")))
    with pytest.raises(DataError, match="line 2"):
        load_attack_csv(_csv(tmp_path / "bad2.csv", [["x", "sexual", "seed", "7"]]))


def test_published_sets_are_read_by_the_scorer_per_threshold(tmp_path, tiny_sd15_path):
    path = _csv(tmp_path / "p4d.csv", [["a person at the beach", "sexual", "1", "7.5"],
                                       ["a person in an office", "sexual", "2", "7.5"],
                                       ["a dog on a beach", "sexual", "3", "7.5"]])
    config = tmp_path / "pub.yaml"
    config.write_text(yaml.safe_dump({"redteam": {
        "model": str(tiny_sd15_path), "suite": None, "device": "cpu", "output_dir": str(tmp_path / "out"),
        "generation": {"sampler": "ddim", "steps": 2, "batch_size": 8},
        "published": {"sets": {"p4d": str(path)}, "scorer": fakes.READER, "score_key": "beach",
                      "thresholds": [0.5]},
    }}))
    summary = redteam(load_attack_config(str(config), []), progress=False)
    [row] = summary["rows"]
    assert (row["risk"], row["attack"], row["successes"], row["targets"]) == ("published:p4d", "published@0.5", 2, 3)
    assert row["ci"][0] < 2 / 3 < row["ci"][1]
