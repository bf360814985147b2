"""core/lora.py: a LoRA on any mix of UNet layers is written so that stock ``load_lora_weights`` restores every
layer with its exact weights."""

from __future__ import annotations

import pytest
import torch

from core.lora import add_lora_adapter, lora_parameters, save_lora
from core.models import load_pipeline


@pytest.mark.parametrize("targets", [
    ["to_q", "to_k", "to_v", "to_out.0"],  # attention only: diffusers' own key names
    ["to_q", "to_k", "to_v", "to_out.0", "ff.net.2", "conv1", "conv_in"],  # with feed-forward and convolutions
], ids=["attention", "mixed"])
def test_saved_lora_loads_back_whole_with_stock_diffusers(tiny_sd15_path, tmp_path, targets):
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(tiny_sd15_path)
    add_lora_adapter(pipe.unet, rank=2, alpha=4.0, target_modules=targets)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_()
    save_lora(tmp_path, pipe.unet, "sd")
    saved = lora_parameters(pipe.unet)

    stock = StableDiffusionPipeline.from_pretrained(str(tiny_sd15_path))
    stock.load_lora_weights(str(tmp_path))
    loaded = {name.replace(".default_0.", "."): p for name, p in stock.unet.named_parameters() if "lora_" in name}
    assert set(loaded) == set(saved)
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name].float(), value.float(), rtol=0, atol=0)
    scale = stock.unet.peft_config["default_0"].lora_alpha / stock.unet.peft_config["default_0"].r
    assert scale == 2.0  # alpha / rank restored from the file's metadata
