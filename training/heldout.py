"""Implicit accuracy of a trained LoRA on held-out preference pairs (no training, no gradients).

For each pair and each of ``draws`` (noise, timestep) draws, the DPO margin
h = -β/2 [(err(θ,w) - err(θ,l)) - (err(ref,w) - err(ref,l))] is computed with the LoRA on (θ) and off
(ref); a pair's accuracy is the fraction of draws with h > 0 (h = 0 counts ½). The mean over pairs and its
standard error (over pairs, the independent unit) say whether the LoRA prefers held-out winners.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import safe_open

from core.errors import ConfigError
from core.models import lora_weights_file
from training.cache import CachedPairSource, build_cache_tensors
from training.data import load_pairs
from training.lora import LORA_WEIGHT_NAME
from training.models import NoiseSchedule, load_components
from training.step import StepDraws, StepModel, pair_errors


@torch.no_grad()
def heldout_implicit_accuracy(
    model_path: str | Path, lora_dir: str | Path, set_folder: str | Path, draws: int = 8, seed: int = 1234,
    batch_size: int = 32, device: str = "cpu",
) -> dict:
    lora_file = lora_weights_file(lora_dir, "give a LoRA folder written by `make train`")
    with safe_open(str(lora_file), "pt") as handle:
        if any(key.startswith("text_encoder.") for key in handle.keys()):
            # The margin below runs the UNet on the frozen encoder's cached states: it would score the UNet's
            # layers alone.
            raise ConfigError(f"{lora_file} holds text-encoder LoRA layers; held-out implicit accuracy scores UNet "
                              "LoRAs only")
    components = load_components(model_path)
    pairs = load_pairs(set_folder, components.resolution)
    source = CachedPairSource(components, build_cache_tensors(components, pairs, device, show_progress=False), device)
    schedule = NoiseSchedule(components.alphas_cumprod, components.scheduler_prediction_type, device)
    unet = components.unet.to(device)
    unet.load_lora_adapter(str(lora_dir), prefix="unet", adapter_name="default", weight_name=LORA_WEIGHT_NAME,
                           use_safetensors=True)
    model = StepModel(unet, unet, schedule, contextlib.nullcontext)
    latent_shape = (unet.config.in_channels, components.latent_size, components.latent_size)
    wins = torch.zeros(len(pairs))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(draws):
        for start in range(0, len(pairs), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(pairs)))
            n = len(indices)
            step_draws = StepDraws(
                indices.to(device), indices, torch.randn((n, *latent_shape), generator=generator).to(device),
                torch.randint(0, schedule.num_train_timesteps, (n,), generator=generator).to(device),
                torch.zeros(n, dtype=torch.bool, device=device),
            )
            model_w, model_l, ref_w, ref_l, _ = pair_errors(model, source.batch(step_draws), step_draws, True)
            margin = -((model_w - model_l) - (ref_w - ref_l))  # sign of h (β > 0 does not change it)
            wins[indices] += ((margin > 0).float() + 0.5 * (margin == 0).float()).cpu()
    per_pair = wins / draws
    return {
        "pairs": len(pairs),
        "draws": draws,
        "accuracy": per_pair.mean().item(),
        "standard_error": (per_pair.std(unbiased=True) / len(pairs) ** 0.5).item(),
    }
