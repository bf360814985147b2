"""Checkpoints as they ship: fp16-variant weight files, hub ids in the local Hugging Face cache, and pickled
weights refused by name, through core.models (what curate and eval load with)."""

from __future__ import annotations

import pytest
import torch

from core.errors import ModelPathError
from core.models import check_model_dir, load_pipeline, resolve_model_path, weight_variant
from tests.core.model_layouts import REPO_ID, copy_model, put_in_hub_cache, save_fp16_variant, use_hub_cache


@pytest.fixture(scope="module")
def fp16_model(tiny_sd15_path, tmp_path_factory):
    return save_fp16_variant(tiny_sd15_path, tmp_path_factory.mktemp("variant") / "sd15-fp16")


@pytest.fixture(scope="module")
def hub_cache(fp16_model, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    put_in_hub_cache(fp16_model, cache)
    return cache


def _unet_weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


def test_variant_file_names():
    assert weight_variant("diffusion_pytorch_model.safetensors") is None
    assert weight_variant("diffusion_pytorch_model.fp16.safetensors") == "fp16"
    assert weight_variant("model.fp16.safetensors") == "fp16"
    assert weight_variant("diffusion_pytorch_model-00001-of-00002.safetensors") is None
    assert weight_variant("diffusion_pytorch_model.fp16-00001-of-00002.safetensors") == "fp16"


def test_fp16_only_folder_says_to_set_the_variant(fp16_model):
    assert not list(fp16_model.glob("unet/diffusion_pytorch_model.safetensors"))  # variant files only
    with pytest.raises(ModelPathError, match="holds fp16-variant weights only.*set variant=fp16"):
        check_model_dir(fp16_model)
    with pytest.raises(ModelPathError, match="holds fp16-variant weights only.*set variant=fp16"):
        load_pipeline(fp16_model)  # the check comes first: no OSError from diffusers
    assert check_model_dir(fp16_model, variant="fp16") == "sd"


def test_fp16_variant_loads(fp16_model, tiny_sd15_path):
    pipe = load_pipeline(fp16_model, dtype=torch.float32, variant="fp16")
    assert pipe.unet.dtype == torch.float32  # fp16 files, loaded at the dtype asked for
    plain = _unet_weights(load_pipeline(tiny_sd15_path))
    loaded = _unet_weights(pipe)
    assert loaded.keys() == plain.keys()
    assert all(torch.equal(loaded[k], plain[k].half().float()) for k in plain)  # the fp16 files' values
    images = pipe("a photo of a cat", num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_variant_that_is_not_there(fp16_model, tiny_sd15_path):
    with pytest.raises(ModelPathError, match=r"no bf16-variant weights.*one of \['fp16'\]"):
        check_model_dir(fp16_model, variant="bf16")
    with pytest.raises(ModelPathError, match="no fp16-variant weights.*leave variant unset"):
        check_model_dir(tiny_sd15_path, variant="fp16")
    with pytest.raises(ModelPathError, match="not a weights variant name"):
        check_model_dir(tiny_sd15_path, variant="fp16.safetensors")


def test_component_without_the_variant_falls_back_to_plain(fp16_model, tiny_sd15_path, tmp_path):
    """As diffusers does: with variant=fp16, a component that has only plain files loads those."""
    mixed = copy_model(fp16_model, tmp_path / "mixed")
    (mixed / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    (mixed / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tiny_sd15_path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert check_model_dir(mixed, variant="fp16") == "sd"
    with pytest.raises(ModelPathError, match=r"holds fp16-variant weights only \(no plain weights in vae/"):
        check_model_dir(mixed)
    plain = _unet_weights(load_pipeline(tiny_sd15_path))
    loaded = _unet_weights(load_pipeline(mixed, variant="fp16"))
    assert all(torch.equal(loaded[k], plain[k]) for k in plain)


def test_hub_id_from_the_local_cache(fp16_model, hub_cache, monkeypatch):
    use_hub_cache(monkeypatch, hub_cache)
    snapshot = resolve_model_path(REPO_ID)
    assert snapshot.is_dir() and snapshot.parent.name == "snapshots" and hub_cache in snapshot.parents
    assert check_model_dir(REPO_ID, variant="fp16") == "sd"
    from_cache = _unet_weights(load_pipeline(REPO_ID, variant="fp16"))
    from_folder = _unet_weights(load_pipeline(fp16_model, variant="fp16"))
    assert all(torch.equal(from_cache[k], from_folder[k]) for k in from_folder)


def test_hub_id_not_in_the_cache_names_the_cache(hub_cache, monkeypatch):
    use_hub_cache(monkeypatch, hub_cache)
    with pytest.raises(ModelPathError) as err:
        load_pipeline("other-org/missing-model")
    message = str(err.value)
    assert "other-org/missing-model" in message and str(hub_cache) in message
    assert "models--other-org--missing-model" in message and "does not exist" in message


def test_existing_local_folder_wins_over_a_hub_id(fp16_model, hub_cache, monkeypatch, tmp_path):
    """A relative path that exists is that folder, even where a cached hub id of the same spelling exists."""
    use_hub_cache(monkeypatch, hub_cache)
    org = tmp_path / REPO_ID.split("/")[0]
    org.mkdir()
    copy_model(fp16_model, org / REPO_ID.split("/")[1])
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path(REPO_ID) == org.relative_to(tmp_path) / REPO_ID.split("/")[1]


def test_pickled_weights_refused_by_name(tiny_sd15_path, tmp_path):
    model = copy_model(tiny_sd15_path, tmp_path / "pickled")
    (model / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    # Never unpickled: the check only looks at file names, so any bytes do.
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelPathError) as err:
        load_pipeline(model)
    message = str(err.value)
    assert "pickled weights (.bin) are refused; convert to safetensors" in message
    assert "unet/diffusion_pytorch_model.bin" in message and "missing" not in message


def test_unreadable_weights_file_is_a_model_path_error(tiny_sd15_path, tmp_path):
    model = copy_model(tiny_sd15_path, tmp_path / "truncated")
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelPathError, match=f"model folder {model} could not be loaded"):
        load_pipeline(model)


def test_component_with_neither_the_variant_nor_plain_weights(fp16_model, tmp_path):
    model = copy_model(fp16_model, tmp_path / "bf16-unet")
    unet = model / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    unet.rename(unet.with_name("diffusion_pytorch_model.bf16.safetensors"))
    with pytest.raises(ModelPathError, match=r"no fp16-variant or plain weights in unet/ \(only bf16\)"):
        check_model_dir(model, variant="fp16")
