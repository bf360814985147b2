"""The LoRA a run saves loads with peft (``PeftModel.from_pretrained``) as well as with diffusers
(``pipe.load_lora_weights``), and both give the UNet the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_random_lora


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_peft_and_diffusers_load_the_same_lora(family, tiny_sd15_path, tiny_sdxl_path, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    from core.models import LORA_WEIGHT_NAME, load_pipeline
    from training.lora import PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME

    model = tiny_sd15_path if family == "sd" else tiny_sdxl_path
    lora = make_random_lora(model, tmp_path / "lora", family)
    assert {p.name for p in lora.iterdir()} >= {LORA_WEIGHT_NAME, PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME}
    config = json.loads((lora / PEFT_CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 2.0

    pipe = load_pipeline(model)
    pipe.load_lora_weights(str(lora))  # stock diffusers: picks its own file among the two
    peft_unet = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(str(model / "unet")), str(lora))
    base_unet = UNet2DConditionModel.from_pretrained(str(model / "unet"))

    cfg = pipe.unet.config
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
    context = torch.randn(2, 16, cfg.cross_attention_dim, generator=generator)
    extra = {}
    if family == "sdxl":
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled_dim, generator=generator),
                                      "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    timesteps = torch.tensor([10, 700])
    with torch.no_grad():
        by_diffusers = pipe.unet(latents, timesteps, context, **extra).sample
        by_peft = peft_unet(latents, timesteps, context, **extra).sample
        base = base_unet(latents, timesteps, context, **extra).sample
    assert (by_diffusers - base).abs().max() > 1e-3  # the LoRA acts
    torch.testing.assert_close(by_peft, by_diffusers, rtol=0, atol=1e-6)
