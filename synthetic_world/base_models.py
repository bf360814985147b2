"""Builders for the synthetic world's stock diffusers ``StableDiffusionPipeline`` components.

Everything here is plain diffusers/transformers: the saved folder loads with
``StableDiffusionPipeline.from_pretrained(path)`` and nothing of ours imported.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from core.tokenizer import save_clip_tokenizer
from synthetic_world.captions import vocabulary_words
from synthetic_world.world_config import TextArch, UnetArch, VaeArch, WorldConfig

# Stable Diffusion's noise schedule (1000 DDPM steps, scaled-linear betas), epsilon prediction, so
# every SD1.5 training recipe (Diffusion-DPO included) applies unchanged.
NOISE_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)


def build_tokenizer(text: TextArch, folder: str | Path):
    """A CLIPTokenizer whose vocabulary holds every word the world's captions can use, one token each."""
    save_clip_tokenizer(list(vocabulary_words()), folder, model_max_length=text.max_length)
    return CLIPTokenizer.from_pretrained(str(folder))


def build_text_encoder(text: TextArch, tokenizer):
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=text.hidden_size,
        intermediate_size=4 * text.hidden_size,
        num_hidden_layers=text.num_layers,
        num_attention_heads=text.num_heads,
        max_position_embeddings=text.max_length,
        projection_dim=text.hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae(vae: VaeArch, image_size: int = 64):
    n = len(vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(vae.block_out_channels),
        layers_per_block=vae.layers_per_block,
        latent_channels=vae.latent_channels,
        norm_num_groups=vae.norm_num_groups,
        sample_size=image_size,
    )


def latent_size(vae: VaeArch, image_size: int = 64) -> int:
    return image_size // 2 ** (len(vae.block_out_channels) - 1)


def build_unet(unet: UnetArch, vae: VaeArch, text: TextArch, image_size: int = 64):
    levels = len(unet.block_out_channels)
    attend = [i < unet.cross_attention_levels for i in range(levels)]  # highest resolution first
    down_blocks = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend)
    up_blocks = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend))
    return UNet2DConditionModel(
        sample_size=latent_size(vae, image_size),
        in_channels=vae.latent_channels,
        out_channels=vae.latent_channels,
        down_block_types=down_blocks,
        up_block_types=up_blocks,
        # mid block always attends (UNetMidBlock2DCrossAttn, diffusers' default)
        block_out_channels=tuple(unet.block_out_channels),
        layers_per_block=unet.layers_per_block,
        attention_head_dim=unet.attention_head_dim,
        norm_num_groups=unet.norm_num_groups,
        cross_attention_dim=text.hidden_size,
    )


def build_train_scheduler():
    return DDPMScheduler(**NOISE_SCHEDULE, clip_sample=False)


def build_sampler(name: str):
    """The saved pipeline's default sampler (same noise schedule as training)."""
    common = dict(NOISE_SCHEDULE, steps_offset=1)
    if name == "dpmsolver":
        # DPM-Solver++ (2M): good samples in ~20-25 steps.
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    if name == "dpmsolver_karras":
        # The same solver on Karras et al. (2022) sigma spacing: denser steps at low noise, which
        # helps when only ~10 steps are taken.
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if name == "euler":
        return EulerDiscreteScheduler(**common)
    raise ValueError(f"unknown sampler {name!r}; valid: dpmsolver, dpmsolver_karras, ddim, euler")


def assemble_pipeline(vae, text_encoder, tokenizer, unet, sampler_name: str):
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_sampler(sampler_name),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline_fp16(pipe, folder: str | Path) -> None:
    """Save as fp16 safetensors (diffusers layout). Callers wrap this in core.io.atomic_directory."""
    pipe.to(torch.float16)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # transformers loads a text encoder in the dtype its config names, diffusers loads the UNet/VAE
    # in float32 unless asked otherwise: name float32 so a plain from_pretrained(path) is consistent
    # (an explicit torch_dtype still wins for every component).
    config_file = Path(folder) / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["dtype"] = "float32"
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(cfg: WorldConfig) -> dict:
    """Parameter counts of the configured architectures (millions), for TRAINING.md."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(cfg.text, tmp)
        te = build_text_encoder(cfg.text, tok)
    return {
        "vae_M": count_parameters(build_vae(cfg.vae)) / 1e6,
        "unet_M": count_parameters(build_unet(cfg.unet, cfg.vae, cfg.text)) / 1e6,
        "text_encoder_M": count_parameters(te) / 1e6,
        "vocab_size": len(tok),
    }


def gflops_per_image(cfg: WorldConfig, image_size: int = 64) -> dict:
    """Forward GFLOPs per image (torch FlopCounterMode, 2 FLOPs per multiply-add) of the configured
    UNet (one call at the latent size, caption of text.max_length tokens) and VAE encode / decode."""
    def count(call) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            call()
        return counter.get_total_flops() / 1e9

    unet = build_unet(cfg.unet, cfg.vae, cfg.text, image_size).eval()
    vae = build_vae(cfg.vae, image_size).eval()
    side = latent_size(cfg.vae, image_size)
    latents = torch.zeros(1, cfg.vae.latent_channels, side, side)
    hidden = torch.zeros(1, cfg.text.max_length, cfg.text.hidden_size)
    return {
        "unet": count(lambda: unet(latents, torch.tensor([500]), encoder_hidden_states=hidden)),
        "vae_decode": count(lambda: vae.decode(latents)),
        "vae_encode": count(lambda: vae.encode(torch.zeros(1, 3, image_size, image_size))),
    }
