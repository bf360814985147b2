"""The trainer's model loading for checkpoints as they ship: fp16-variant weights, from a folder or from a hub
id in the local Hugging Face cache."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError, ModelPathError
from tests.core.model_layouts import REPO_ID, put_in_hub_cache, save_fp16_variant, use_hub_cache


@pytest.fixture(scope="module")
def fp16_model(tiny_sd15_path, tmp_path_factory):
    return save_fp16_variant(tiny_sd15_path, tmp_path_factory.mktemp("variant") / "sd15-fp16")


def test_load_components_fp16_variant_from_the_hub_cache(fp16_model, tiny_sd15_path, tmp_path, monkeypatch):
    from training.models import load_components

    cache = tmp_path / "hub"
    snapshot = put_in_hub_cache(fp16_model, cache)
    use_hub_cache(monkeypatch, cache)

    with pytest.raises(ModelPathError, match="fp16-variant weights only.*set variant=fp16"):
        load_components(REPO_ID)
    components = load_components(REPO_ID, variant="fp16")
    assert components.model_path == str(snapshot)  # the caches fingerprint the files actually read
    assert components.family == "sd" and components.resolution == 32 and components.variant == "fp16"
    plain = load_components(tiny_sd15_path)
    for name in ("unet", "vae"):
        ours, reference = getattr(components, name).state_dict(), getattr(plain, name).state_dict()
        assert all(ours[k].dtype == torch.float32 for k in ours)  # trained in float32 whatever the files hold
        assert all(torch.equal(ours[k], reference[k].half().float()) for k in reference)
    assert not any(p.requires_grad for p in components.unet.parameters())


def test_train_config_takes_a_variant(tmp_path):
    from training.train import load_config

    assert load_config(None, ["model=m"]).variant is None
    assert load_config(None, ["model=m", "variant=fp16", f"data={tmp_path}"]).variant == "fp16"
    with pytest.raises(ConfigError, match="variant"):
        load_config(None, ["model=m", "variant=[fp16]"])
