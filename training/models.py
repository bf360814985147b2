"""Model side of training: load the frozen parts, encode text and images, the forward-noising schedule.

Works for SD1.x/2.x (one CLIP text encoder) and SDXL (two encoders: penultimate hidden states
concatenated, the second encoder's pooled projection, and 6 micro-conditioning time ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from core.errors import ConfigError
from core.models import check_model_dir, load_pipeline, resolve_model_path


@dataclass
class DiffusionComponents:
    family: str  # "sd" or "sdxl"
    model_path: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    tokenizers: list
    text_encoders: list
    alphas_cumprod: torch.Tensor  # (T,) float64 from the training scheduler
    scheduler_prediction_type: str
    resolution: int  # native image size in px: vae_scale_factor × unet.config.sample_size
    variant: str | None = None  # the weight files loaded ("fp16", ...; None: the plain ones)

    @property
    def latent_size(self) -> int:
        return int(self.unet.config.sample_size)


def load_components(model_path: str | Path, variant: str | None = None) -> DiffusionComponents:
    """Load an SD/SDXL folder (or a hub id in the local Hugging Face cache) with stock diffusers (safetensors
    only); ``variant`` picks the weight files (e.g. "fp16": they are loaded as float32). Everything frozen, on CPU.
    ``model_path`` of the result is the local folder, so the caches fingerprint the files actually read."""
    model_path = resolve_model_path(model_path)
    family = check_model_dir(model_path, variant)
    pipe = load_pipeline(model_path, dtype=torch.float32, variant=variant)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    for module in [pipe.unet, pipe.vae, *text_encoders]:
        module.requires_grad_(False)
        module.eval()
    vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return DiffusionComponents(
        family=family,
        model_path=str(model_path),
        unet=pipe.unet,
        vae=pipe.vae,
        tokenizers=tokenizers,
        text_encoders=text_encoders,
        alphas_cumprod=scheduler.alphas_cumprod.double(),
        scheduler_prediction_type=scheduler.config.prediction_type,
        resolution=vae_scale_factor * int(pipe.unet.config.sample_size),
        variant=variant,
    )


@dataclass
class TextConditioning:
    prompt_embeds: torch.Tensor  # (N, L, D) cross-attention states
    pooled_embeds: torch.Tensor | None  # (N, D2) SDXL only


def caption_token_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """(N, L) int64 token ids of ``captions``, padded and truncated as the stock pipelines tokenise a prompt."""
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompts(components: DiffusionComponents, captions: list[str], device) -> TextConditioning:
    """Captions -> UNet text conditioning, exactly as the stock pipelines compute it for the prompt."""
    hidden_states, pooled = [], None
    for tokenizer, encoder in zip(components.tokenizers, components.text_encoders):
        ids = caption_token_ids(tokenizer, captions).to(device)
        if components.family == "sd":
            hidden_states.append(encoder(ids)[0])  # last hidden state
        else:
            out = encoder(ids, output_hidden_states=True)
            hidden_states.append(out.hidden_states[-2])  # SDXL uses the penultimate layer
            pooled = out[0]  # the last encoder's pooled projection (text_embeds)
    return TextConditioning(torch.cat(hidden_states, dim=-1).float(), None if pooled is None else pooled.float())


@torch.no_grad()
def encode_images(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H/f, W/f), float32.

    We take the *mean* of the VAE posterior, not a sample: it makes the latent cache deterministic and
    a pair's latents independent of batch composition; the SD VAE posterior std is ~1e-3 of the latent
    scale, so this changes the data negligibly (diffusers' and the official scripts sample).
    """
    param = next(vae.parameters())
    latents = vae.encode(pixels.to(param.device, param.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return (latents * vae.config.scaling_factor).float()


def sdxl_time_ids(resolution: int, batch: int, device) -> torch.Tensor:
    """(B, 6) micro-conditioning: original size, crop top-left, target size (no crops in our data)."""
    ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
    return ids.to(device).expand(batch, 6)


class NoiseSchedule:
    """Forward noising q(x_t | x_0) with ᾱ on the training device (diffusers' ``add_noise`` copies the
    table from the CPU on every call, which is a host sync per step on CUDA).

        x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε
        v   = sqrt(ᾱ_t) ε   - sqrt(1 - ᾱ_t) x_0        (Salimans & Ho 2022)
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, device) -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type {prediction_type!r} is not supported (epsilon, v_prediction)")
        self.prediction_type = prediction_type
        self.num_train_timesteps = len(alphas_cumprod)
        self.sqrt_alpha_bar = alphas_cumprod.sqrt().float().to(device)
        self.sqrt_one_minus_alpha_bar = (1.0 - alphas_cumprod).sqrt().float().to(device)

    def _coefficients(self, timesteps: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1,) + (1,) * (ndim - 1)
        return (
            self.sqrt_alpha_bar[timesteps].view(shape),
            self.sqrt_one_minus_alpha_bar[timesteps].view(shape),
        )

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients(timesteps, latents.ndim)
        return a * latents + s * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict: ε, or v."""
        if self.prediction_type == "epsilon":
            return noise
        a, s = self._coefficients(timesteps, latents.ndim)
        return a * noise - s * latents
