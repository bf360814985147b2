"""The text-encoder LoRA (train.lora.text_encoder_modules): what it trains, how it is saved and loaded, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from core.errors import ConfigError
from tests.training.conftest import tiny_config
from training.models import caption_token_ids
from training.text_lora import TextEncoderLora
from training.train import train

TEXT_MODULES = "lora.text_encoder_modules=[q_proj,k_proj,v_proj,out_proj]"


def _text_lora_state(run_dir):
    state = load_file(str(run_dir / "lora" / "text_encoder" / "adapter_model.safetensors"))
    return {k[len("base_model.model."):]: v for k, v in state.items()}


def test_text_encoder_lora_starts_at_the_frozen_encoder_and_gets_gradients(tiny_sd15_path):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))
    ids = caption_token_ids(pipe.tokenizer, ["a photo of a cat", "a dog in the park"])
    frozen = pipe.text_encoder(ids)[0]
    text = TextEncoderLora(copy.deepcopy(pipe.text_encoder), rank=4, alpha=4, target_modules=["q_proj", "v_proj"])
    states = text(ids)
    assert torch.equal(states, frozen)  # B = 0 at the start: the policy's states are the reference's
    states.square().sum().backward()
    grads = [p.grad for p in text.trainable_parameters()]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(p.dtype == torch.float32 for p in text.trainable_parameters())
    assert not any(p.requires_grad for n, p in text.named_parameters() if "lora_" not in n)


def test_unknown_text_encoder_module_is_a_config_error(tiny_sd15_path):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))
    with pytest.raises(ConfigError, match="text_encoder_modules"):
        TextEncoderLora(pipe.text_encoder, rank=4, alpha=4, target_modules=["no_such_proj"])


def test_loading_a_text_lora_state_that_lacks_weights_is_a_config_error(tiny_sd15_path):
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))
    text = TextEncoderLora(pipe.text_encoder, rank=4, alpha=4, target_modules=["q_proj", "v_proj"])
    state = text.lora_state()
    text.load_lora_state(state)  # its own state loads
    partial = {k: v for k, v in state.items() if "q_proj" not in k}
    with pytest.raises(ConfigError, match="lacks"):
        text.load_lora_state(partial)


def test_trained_text_lora_is_saved_and_loads_with_stock_load_lora_weights(tiny_sd15_path, tiny_set, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(tiny_sd15_path, tiny_set, run, TEXT_MODULES, "learning_rate=1e-2"))
    assert summary["steps"] == 3
    with safe_open(str(run / "lora" / "pytorch_lora_weights.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    assert "on the text encoder's `q_proj, k_proj, v_proj, out_proj`" in (run / "lora" / "README.md").read_text()

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))
    ids = caption_token_ids(pipe.tokenizer, ["a photo of a cat", "a blue ball on the beach"])
    frozen = pipe.text_encoder(ids)[0]
    ours = TextEncoderLora(copy.deepcopy(pipe.text_encoder), rank=4, alpha=4,
                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    ours.load_lora_state(_text_lora_state(run))
    expected = ours(ids)
    pipe.load_lora_weights(str(run / "lora"))
    stock = pipe.text_encoder(ids)[0]
    assert (expected - frozen).abs().max() > 1e-6  # the encoder's LoRA was trained
    torch.testing.assert_close(stock, expected, rtol=0, atol=1e-6)


def test_resume_with_text_lora_matches_uninterrupted_run(tiny_sd15_path, tiny_set, tmp_path):
    from tests.training.test_train import _assert_same_lora, _lora
    from training.callbacks import StopAtStep

    common = (TEXT_MODULES, "max_train_steps=4", "checkpoint_every=2", "learning_rate=1e-2")
    full, parted = tmp_path / "full", tmp_path / "parted"
    train(tiny_config(tiny_sd15_path, tiny_set, full, *common))
    assert train(tiny_config(tiny_sd15_path, tiny_set, parted, *common), [StopAtStep(2)]) == {"stopped_at": 2}
    assert (parted / "work" / "checkpoints" / "checkpoint-0000002" / "text_encoder_lora.safetensors").is_file()
    train(tiny_config(tiny_sd15_path, tiny_set, parted, *common, "resume=latest"))
    _assert_same_lora(_lora(full), _lora(parted), atol=1e-6)
    full_text, parted_text = _text_lora_state(full), _text_lora_state(parted)
    assert full_text.keys() == parted_text.keys()
    for key in full_text:
        torch.testing.assert_close(parted_text[key], full_text[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("extra, message", [
    ("init_lora={lora}", "has no text encoder LoRA"),
    ("export_merged_unet=true", "export_merged_unet"),
    ("cache_latents=false", "cache_latents"),
])
def test_what_the_text_lora_does_not_cover_fails_before_loading(tiny_sd15_path, tiny_set, random_lora, tmp_path,
                                                               extra, message):
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", TEXT_MODULES, extra.format(lora=random_lora))
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_text_lora_on_sdxl_is_a_config_error(tiny_sdxl_path, tiny_set, tmp_path):
    cfg = tiny_config(tiny_sdxl_path, tiny_set, tmp_path / "run", TEXT_MODULES)
    with pytest.raises(ConfigError, match="SD1.x/2.x"):
        train(cfg)


def test_only_rows_marked_trains_text_read_the_trained_encoder():
    from training.step import _unet_call

    seen = {}

    class RecordingUNet(torch.nn.Module):
        def forward(self, noisy, timesteps, encoder_hidden_states):
            seen["states"] = encoder_hidden_states
            return type("Out", (), {"sample": noisy})()

    cached = torch.zeros(3, 4, 2)
    cond = {"encoder_hidden_states": cached, "input_ids": torch.ones(3, 4, dtype=torch.long),
            "trains_text": torch.tensor([True, False, True])}
    _unet_call(RecordingUNet(), torch.zeros(3, 1), torch.zeros(3), cond, False,
               text=lambda ids: torch.ones(*ids.shape, 2))
    assert seen["states"][:, 0, 0].tolist() == [1.0, 0.0, 1.0]
    _unet_call(RecordingUNet(), torch.zeros(3, 1), torch.zeros(3), cond, False)  # no trained encoder: cached states
    assert torch.equal(seen["states"], cached)


def test_text_encoder_risks_must_be_in_the_set(tiny_sd15_path, tiny_set, tmp_path):
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", TEXT_MODULES, "lora.text_encoder_risks=[stereotype]")
    with pytest.raises(ConfigError, match="text_encoder_risks"):
        train(cfg)
    with pytest.raises(ConfigError, match="text_encoder_risks needs lora.text_encoder_modules"):
        tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run2", "lora.text_encoder_risks=[exposure]")


def test_text_encoder_risks_runs_and_saves(tiny_sd15_path, tiny_set, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_sd15_path, tiny_set, run, TEXT_MODULES, "lora.text_encoder_risks=[exposure]"))
    assert _text_lora_state(run)


def test_accumulation_with_text_lora_matches_the_larger_batch(tiny_sd15_path, tiny_set, tmp_path):
    from tests.training.test_train import EQUIVALENCE, _assert_same_run

    accumulated, single = tmp_path / "accum", tmp_path / "single"
    train(tiny_config(tiny_sd15_path, tiny_set, accumulated, TEXT_MODULES, "micro_batch_size=2",
                      "gradient_accumulation_steps=2", *EQUIVALENCE))
    train(tiny_config(tiny_sd15_path, tiny_set, single, TEXT_MODULES, "micro_batch_size=4",
                      "gradient_accumulation_steps=1", *EQUIVALENCE))
    _assert_same_run(single, accumulated)
    a, b = _text_lora_state(single), _text_lora_state(accumulated)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5)


def test_heldout_accuracy_refuses_a_lora_with_text_encoder_layers(tiny_sd15_path, tiny_set, tmp_path):
    from training.heldout import heldout_implicit_accuracy

    run = tmp_path / "run"
    train(tiny_config(tiny_sd15_path, tiny_set, run, TEXT_MODULES))
    with pytest.raises(ConfigError, match="text-encoder LoRA layers"):
        heldout_implicit_accuracy(tiny_sd15_path, run / "lora", tiny_set, draws=1)


@pytest.fixture(scope="module")
def text_first_round(tiny_sd15_path, tiny_set, tmp_path_factory):
    """A first round's output folder with a trained text encoder LoRA (non-zero B), shared by the init_lora tests."""
    first = tmp_path_factory.mktemp("text_round1")
    train(tiny_config(tiny_sd15_path, tiny_set, first, TEXT_MODULES, "learning_rate=1e-2"))
    return first


def test_a_later_round_continues_the_text_encoder_lora(tiny_sd15_path, tiny_set, text_first_round, tmp_path):
    """train.init_lora from a LoRA with a text encoder part: both parts start where the first round ended (at a
    learning rate of 1e-12 the second round saves them as they were), and the first step is no longer at the
    reference."""
    first, second = text_first_round, tmp_path / "second"
    train(tiny_config(tiny_sd15_path, tiny_set, second, TEXT_MODULES, "learning_rate=1e-12", "lr_warmup_steps=0",
                      "log_every=1", f"init_lora={first / 'lora'}"))
    start, end = _text_lora_state(first), _text_lora_state(second)
    assert start.keys() == end.keys() and any(v.abs().sum() > 0 for k, v in start.items() if "lora_B" in k)
    for key in start:
        torch.testing.assert_close(end[key], start[key], rtol=0, atol=1e-8)
    from tests.training.test_train import _losses

    assert _losses(second)[1] != pytest.approx(_losses(first)[1], abs=1e-6)  # policy != reference at step 1


@pytest.mark.parametrize("modules, message", [
    ("lora.text_encoder_modules=[]", "holds a text encoder LoRA"),
    ("lora.text_encoder_modules=[q_proj,v_proj]", "its text encoder LoRA is on"),
])
def test_a_text_lora_that_does_not_match_init_lora_fails_before_loading(tiny_sd15_path, tiny_set, text_first_round,
                                                                        tmp_path, modules, message):
    cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", modules, f"init_lora={text_first_round / 'lora'}")
    with pytest.raises(ConfigError, match=message):
        train(cfg)


def test_a_diffusers_file_alone_with_text_layers_is_refused(tiny_sd15_path, tiny_set, text_first_round, tmp_path):
    """A LoRA file copied without its text_encoder/ folder: its text half could be neither continued nor dropped
    silently, so both kinds of run stop before loading."""
    import shutil

    first = text_first_round
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(first / "lora" / "pytorch_lora_weights.safetensors", alone / "pytorch_lora_weights.safetensors")
    for modules in (TEXT_MODULES, "lora.text_encoder_modules=[]"):
        cfg = tiny_config(tiny_sd15_path, tiny_set, tmp_path / "run", modules, f"init_lora={alone}")
        with pytest.raises(ConfigError, match="holds text encoder layers"):
            train(cfg)
