"""Random-init SD1.5- and SDXL-architecture pipelines, from the published configs written in code.

Throughput does not depend on weight values, so the bench builds the real architectures (same layer
shapes as ``runwayml/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-xl-base-1.0``) with
random weights and never downloads anything. The tokenizer is a small closed-vocabulary CLIP BPE
tokenizer (``core.tokenizer``): the text encoders keep their real 49408-row embedding tables and
77-token context, so their cost is the real one.

``scale="tiny"`` swaps in the toy-width fixtures of ``core.tiny_models`` for the CPU smoke run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from core.errors import ConfigError
from core.tiny_models import build_tiny_sd15, build_tiny_sdxl
from core.tokenizer import save_clip_tokenizer

BENCH_WORDS = "a photo of an the person cat dog red blue green at in on with beach office park".split()

# --- published component configs (diffusers/transformers keyword arguments) -----------------------

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
)

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    # diffusers' SDXL config names head counts "attention_head_dim" (5, 10, 20 heads of 64 channels).
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG) hidden states, concatenated
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled text + 6 time ids x 256
    norm_num_groups=32,
    flip_sin_to_cos=True,
    freq_shift=0,
)

VAE_COMMON = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
)
SD15_VAE = dict(VAE_COMMON, sample_size=512, scaling_factor=0.18215)
SDXL_VAE = dict(VAE_COMMON, sample_size=1024, scaling_factor=0.13025)

CLIP_VIT_L_TEXT = dict(  # SD1.5's text encoder and SDXL's first one
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
OPENCLIP_BIGG_TEXT = dict(  # SDXL's second text encoder (with projection -> pooled embeds)
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)


@dataclass(frozen=True)
class ArchSpec:
    """What the bench needs to know about one architecture."""

    family: str  # "sd" or "sdxl" (as core.models.model_family says)
    name: str  # "sd15" / "sdxl"
    resolution: int  # native image size in pixels
    latent_size: int  # resolution / 8


ARCHS = {
    "sd15": ArchSpec("sd", "sd15", 512, 64),
    "sdxl": ArchSpec("sdxl", "sdxl", 1024, 128),
}
TINY_RESOLUTION = 32  # core.tiny_models pipelines: 32 px images, 4x4... 16x16 latents


def arch_spec(name: str, scale: str) -> ArchSpec:
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; valid: {sorted(ARCHS)}")
    spec = ARCHS[name]
    if scale == "tiny":
        return ArchSpec(spec.family, spec.name, TINY_RESOLUTION, TINY_RESOLUTION // 8)
    return spec


def _text_encoder(cfg: dict, tokenizer, with_projection: bool):
    config = CLIPTextConfig(
        **cfg,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _scheduler():
    # SD1.5/SDXL's training schedule (scaled-linear betas, 1000 steps); Euler is SDXL's default sampler.
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_full_pipeline(name: str, tokenizer_folder: str | Path, device: str = "cpu", dtype=None):
    """A random-init full-size pipeline, built directly on ``device`` (fast init on a GPU).

    Returns a ``StableDiffusionPipeline`` (sd15) or ``StableDiffusionXLPipeline`` (sdxl) in ``dtype``.
    """
    if name not in ARCHS:
        raise ConfigError(f"unknown architecture {name!r}; valid: {sorted(ARCHS)}")
    dtype = dtype or torch.float32
    folder = save_clip_tokenizer(BENCH_WORDS, Path(tokenizer_folder), model_max_length=77)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    # Building under a device context allocates and random-initialises the weights on that device.
    with torch.device(device):
        if name == "sd15":
            pipe = StableDiffusionPipeline(
                unet=UNet2DConditionModel(**SD15_UNET),
                vae=AutoencoderKL(**SD15_VAE),
                text_encoder=_text_encoder(CLIP_VIT_L_TEXT, tokenizer, with_projection=False),
                tokenizer=tokenizer,
                scheduler=_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            pipe = StableDiffusionXLPipeline(
                unet=UNet2DConditionModel(**SDXL_UNET),
                vae=AutoencoderKL(**SDXL_VAE),
                text_encoder=_text_encoder(CLIP_VIT_L_TEXT, tokenizer, with_projection=False),
                text_encoder_2=_text_encoder(OPENCLIP_BIGG_TEXT, tokenizer, with_projection=True),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                scheduler=_scheduler(),
            )
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_model_folder(name: str, scale: str, folder: str | Path, dtype=None, device: str = "cpu") -> Path:
    """Save a random-init pipeline of ``name`` at ``scale`` ("full" or "tiny") as a local diffusers folder.

    The project's entry points take model folders (``core.models.load_pipeline``), so the bench hands
    them one exactly like a real checkpoint.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    if scale == "tiny":
        return (build_tiny_sd15 if name == "sd15" else build_tiny_sdxl)(folder)
    if scale != "full":
        raise ConfigError(f"scale must be 'full' or 'tiny', got {scale!r}")
    pipe = build_full_pipeline(name, folder.parent / f".{folder.name}-tokenizer", device=device, dtype=dtype or torch.bfloat16)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())
