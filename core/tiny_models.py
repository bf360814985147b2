"""Tiny random-weight SD1.5- and SDXL-shaped pipelines, built locally from configs (no downloads).

They have the real architectures' structure (cross-attention UNet, KL VAE, CLIP text encoders,
SDXL's two encoders and micro-conditioning) at toy width, so tests exercise the real code paths in
seconds. Weights are random: only mechanics can be tested with them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from core.tokenizer import save_clip_tokenizer

TINY_WORDS = (
    "a photo of an the person cat dog red blue green at in on with beach office park "
    "wearing holding suit dress book ball nude safe unsafe , ."
).split()


def _tokenizer(folder: Path, max_len: int):
    save_clip_tokenizer(list(TINY_WORDS), folder, model_max_length=max_len)
    return CLIPTokenizer.from_pretrained(str(folder))


def _text_encoder(vocab_size: int, hidden: int, max_len: int, projection: bool, seed: int):
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_len,
        projection_dim=hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int):
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def _scheduler():
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd15(folder: str | Path, seed: int = 0, max_len: int = 16) -> Path:
    """Save a tiny random SD1.5-shaped ``StableDiffusionPipeline`` to ``folder`` (32 px images)."""
    folder = Path(folder)
    tokenizer = _tokenizer(folder / "_tok", max_len)
    text_encoder = _text_encoder(len(tokenizer), 32, max_len, projection=False, seed=seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=_vae(seed + 2),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _cleanup(folder)
    return folder


def build_tiny_sdxl(folder: str | Path, seed: int = 0, max_len: int = 16) -> Path:
    """Save a tiny random SDXL-shaped ``StableDiffusionXLPipeline`` (two text encoders, time ids)."""
    folder = Path(folder)
    tokenizer = _tokenizer(folder / "_tok", max_len)
    text_encoder = _text_encoder(len(tokenizer), 32, max_len, projection=False, seed=seed)
    text_encoder_2 = _text_encoder(len(tokenizer), 32, max_len, projection=True, seed=seed + 3)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        # SDXL conditioning: text embeds are the two encoders' hidden states concatenated (32 + 32),
        # plus pooled text embeds and 6 micro-conditioning time ids through the "text_time" path.
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=32 + 6 * 8,
        norm_num_groups=8,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(seed + 2),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=_scheduler(),
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _cleanup(folder)
    return folder


def _cleanup(folder: Path) -> None:
    shutil.rmtree(folder / "_tok", ignore_errors=True)


# A toy open_clip architecture (ViT image tower, transformer text tower) for tests of CLIP code paths.
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_clip(folder: str | Path, name: str = "tiny-clip", seed: int = 0) -> Path:
    """Save a random-weight open_clip model folder (``<name>.json`` + ``<name>.safetensors``), the
    same layout as models/synthetic-clip, loadable with ``core.clip.load_clip(folder)``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / f"{name}.safetensors")
    return folder
