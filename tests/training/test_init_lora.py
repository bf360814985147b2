"""train.init_lora: a run that starts from an earlier LoRA (iterative DPO), and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import ConfigError
from tests.training.test_bad_input import _nothing_written, _run
from training.config import LoraSettings
from training.lora import add_lora, init_lora_from, lora_parameters, read_lora_file


@pytest.fixture(scope="module")
def first_round(tiny_sd15_path, tiny_set, tmp_path_factory):
    """A LoRA from a short first run (non-zero B after 3 steps)."""
    folder = tmp_path_factory.mktemp("round1")
    assert _run(folder, tiny_sd15_path, tiny_set, "max_train_steps=3", "learning_rate=1e-2") == 0
    return folder / "out"


def _fresh_unet(model):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(model / "unet"))


def test_init_lora_loads_every_saved_layer(tiny_sd15_path, first_round):
    unet = _fresh_unet(tiny_sd15_path)
    settings = LoraSettings()
    add_lora(unet, settings)
    assert all(not v.any() for k, v in lora_parameters(unet).items() if "lora_B" in k)  # B = 0 at init
    saved, config = read_lora_file(first_round)
    init_lora_from(unet, (saved, config), settings, first_round)
    ours = lora_parameters(unet)
    assert set(ours) == set(saved) and config["r"] == settings.rank
    assert all(torch.equal(ours[k], saved[k].to(ours[k].dtype)) for k in ours)
    assert any(v.any() for k, v in ours.items() if "lora_B" in k)


def test_training_from_a_lora_starts_away_from_the_reference(tiny_sd15_path, tiny_set, first_round, tmp_path):
    """From B = 0 the first step's DPO loss is exactly log 2 (policy = reference); from a trained LoRA it
    is not, because the reference stays the base model."""
    import math

    assert _run(tmp_path / "fresh", tiny_sd15_path, tiny_set, "log_every=1") == 0
    assert _run(tmp_path / "cont", tiny_sd15_path, tiny_set, "log_every=1", f"init_lora={first_round}") == 0
    first = {name: json.loads((tmp_path / name / "out" / "metrics.jsonl").read_text().splitlines()[0])
             for name in ("fresh", "cont")}
    assert first["fresh"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(first["cont"]["loss"] - math.log(2)) > 1e-4


@pytest.mark.parametrize("extra, fragment", [
    ("lora.rank=4", "train.lora to match"),
    ("lora.target_modules=[to_q,to_k,to_v,to_out.0,proj_in]", "lacks"),
])
def test_init_lora_that_does_not_match_is_a_clear_error(extra, fragment, tiny_sd15_path, tiny_set, first_round,
                                                        tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, f"init_lora={first_round}", extra) == 2
    assert fragment in capsys.readouterr().err
    _nothing_written(tmp_path)


def test_missing_or_corrupt_init_lora(tiny_sd15_path, tiny_set, tmp_path, capsys):
    assert _run(tmp_path, tiny_sd15_path, tiny_set, f"init_lora={tmp_path / 'nope'}") == 2
    assert "LoRA file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert _run(tmp_path, tiny_sd15_path, tiny_set, f"init_lora={bad}") == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    _nothing_written(tmp_path)
    with pytest.raises(ConfigError):
        read_lora_file(bad)


def test_digest_ignores_later_options_at_their_defaults():
    """Checkpoints written before RPO / init_lora / pairs_per_step / the text encoder's LoRA existed keep resuming;
    setting them changes the objective and therefore the digest."""
    import dataclasses

    from training.checkpoints import _LATER_DEFAULTS, config_digest
    from training.config import TrainConfig

    cfg = TrainConfig(model="m", data="set")
    assert all(getattr(cfg, k) == v for k, v in _LATER_DEFAULTS.items())
    from core.config import to_dict
    from core.io import stable_key
    from training.checkpoints import (_BOOKKEEPING, _LATER_LORA_DEFAULTS, _LATER_RETAIN_DEFAULTS,
                                      _MOVED_TO_KERNEL_OPTIONS)

    before = {k: v for k, v in to_dict(cfg).items() if k not in _BOOKKEEPING and k not in _LATER_DEFAULTS}
    before["retain"] = {k: v for k, v in before["retain"].items() if k not in _LATER_RETAIN_DEFAULTS}
    before["lora"] = {k: v for k, v in before["lora"].items() if k not in _LATER_LORA_DEFAULTS}
    before.update(_MOVED_TO_KERNEL_OPTIONS)  # fields of the config when these checkpoints were written
    assert config_digest(cfg) == stable_key(before)
    assert config_digest(dataclasses.replace(cfg, rpo_alpha=0.1)) != config_digest(cfg)
    assert config_digest(dataclasses.replace(cfg, init_lora="x")) != config_digest(cfg)
    assert config_digest(dataclasses.replace(cfg, pairs_per_step=16)) != config_digest(cfg)
    retain = dataclasses.replace(cfg.retain, images_per_step=4)
    assert config_digest(dataclasses.replace(cfg, retain=retain)) != config_digest(cfg)
    lora = dataclasses.replace(cfg.lora, text_encoder_modules=["q_proj"])
    assert config_digest(dataclasses.replace(cfg, lora=lora)) != config_digest(cfg)
