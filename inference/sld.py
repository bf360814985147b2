"""Safe Latent Diffusion (SLD; Schramowski et al. 2023, arXiv 2211.05105) as a generation baseline.

SLD changes nothing in the model: at every sampling step it adds a third UNet pass conditioned on a *safety
concept* c_S and steers the classifier-free guidance away from it where the prompt's prediction leans towards the
concept (the paper's eqs. 3-8, diffusers' ``StableDiffusionPipelineSafe``):

    ε̄ = ε_∅ + s_g · (ε_p − ε_∅ − γ),    γ = μ ⊙ (ε_S − ε_∅) + s_m · ν        (applied from step δ on)
    μ = min(s_S · |ε_p − ε_S|, 1) where ε_p − ε_S < λ, else 0;  ν ← β_m · ν + (1 − β_m) · γ  (every step)

with s_g the guidance scale, s_S ``sld_guidance_scale``, λ ``sld_threshold``, s_m ``sld_momentum_scale``, β_m
``sld_mom_beta`` and δ ``sld_warmup_steps``. diffusers ships the paper's four presets (``SafetyConfig.WEAK`` /
``MEDIUM`` / ``STRONG`` / ``MAX``).

Warm-up and step count. The presets were tuned for 50 sampling steps (diffusers' default, the paper's setting):
δ = 15 / 10 / 7 / 0 steps leave the first 30% / 20% / 14% / 0% of the trajectory unguided, so that the image's
composition forms from the prompt before the safety guidance acts. What matters is that share of the noise levels,
not the count: with a sampler that takes N steps over the same timesteps, δ steps cover δ/N of them. So
:meth:`SLDConfig.settings` scales δ to the call's step count, ``round(δ · N / 50)`` (``warmup_scaling:
proportional``): at the demo's 8 DPM-Solver++ steps MEDIUM's 10 becomes 2 (timesteps 999 → 750, where 10 of 50
DDIM steps reach 800), STRONG's 7 becomes 1. Without the scaling, WEAK's 15 and MEDIUM's 10 would exceed 8 steps
and SLD would never act. The other settings are per step and are kept: s_S and λ act element-wise on one step's
predictions; the momentum's decay β_m is per step, so over 8 steps it remembers a longer stretch of the trajectory
than over 50 (left as the presets set it; its steady state s_m/(1 − s_m) of γ is the same).

SLD acts only through classifier-free guidance (γ is inside the s_g term), so at the synthetic model's guidance 1.5
it moves each step 1.5 · γ, a fifth of what it would at SD's 7.5; guidance ≤ 1 turns it off and is refused here.

The pipeline is Stable Diffusion 1.x/2.x only: diffusers has no SDXL version of it (one CLIP text encoder, no
pooled or size conditioning), and :func:`load_sld_pipeline` refuses an SDXL model. It is used the way the
generation engine uses any pipeline (``inference.generation.generate`` / ``ImageStore.generate_missing``): the same
specs, one seeded generator per image, so the same seeds give SLD images comparable to the base model's.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import diffusers
import torch
from diffusers import StableDiffusionPipelineSafe
from diffusers.utils import logging as diffusers_logging

from core.errors import ConfigError
from core.io import stable_key
from core.models import check_model_dir, load_pipeline

# The step count the presets were tuned for (diffusers' default num_inference_steps; the SLD paper's runs).
PRESET_STEPS = 50
PRESET_NAMES = ("weak", "medium", "strong", "max")


def safe_pipeline_class():
    """diffusers' ``StableDiffusionPipelineSafe`` (top-level export; the module moved under ``deprecated``)."""

    return StableDiffusionPipelineSafe


def sld_presets() -> dict[str, dict[str, float]]:
    """The presets as diffusers defines them (``SafetyConfig``), by lower-case name."""
    try:
        from diffusers.pipelines.stable_diffusion_safe import SafetyConfig  # optional: path varies by version
    except ImportError:  # diffusers >= 0.33 keeps it under deprecated/
        from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig  # optional: path varies by version
    return {name: dict(getattr(SafetyConfig, name.upper())) for name in PRESET_NAMES}


@dataclass
class SLDConfig:
    """Which SLD settings to generate with: a preset, optionally with single settings replaced."""

    preset: Literal["weak", "medium", "strong", "max"] = field(default="medium", metadata={
        "help": "diffusers' SafetyConfig preset (the SLD paper's hyper-parameter sets): weak, medium, strong, max."})
    safety_concept: Optional[str] = field(default=None, metadata={
        "help": "Text of the concept SLD guides away from; null: diffusers' default (hate, harassment, violence, "
                "..., nudity, ...). Write it in words the model's tokenizer knows."})
    warmup_scaling: Literal["proportional", "none"] = field(default="proportional", metadata={
        "help": "proportional: the preset's warm-up δ (tuned for 50 steps) becomes round(δ · steps / 50) for a "
                "call of that many steps, so the same share of the trajectory runs unguided; none: δ as the "
                "preset sets it."})
    guidance_scale: Optional[float] = field(default=None, metadata={
        "help": "sld_guidance_scale s_S, over the preset's; null: the preset's."})
    warmup_steps: Optional[int] = field(default=None, metadata={
        "help": "sld_warmup_steps δ in steps of the actual call (not scaled); null: the preset's, scaled as "
                "warmup_scaling says."})
    threshold: Optional[float] = field(default=None, metadata={
        "help": "sld_threshold λ, over the preset's; null: the preset's."})
    momentum_scale: Optional[float] = field(default=None, metadata={
        "help": "sld_momentum_scale s_m, over the preset's; null: the preset's."})
    momentum_beta: Optional[float] = field(default=None, metadata={
        "help": "sld_mom_beta β_m, in [0, 1), over the preset's; null: the preset's."})

    def validate(self) -> None:
        if self.safety_concept is not None and not self.safety_concept.strip():
            raise ValueError("sld.safety_concept is empty; give the concept's text, or null for diffusers' default")
        if self.guidance_scale is not None and self.guidance_scale <= 1:
            raise ValueError(f"sld.guidance_scale must be > 1 (diffusers turns SLD off at <= 1), "
                             f"got {self.guidance_scale}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"sld.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.momentum_scale is not None and self.momentum_scale < 0:
            raise ValueError(f"sld.momentum_scale must be >= 0, got {self.momentum_scale}")
        if self.momentum_beta is not None and not 0 <= self.momentum_beta < 1:
            raise ValueError(f"sld.momentum_beta must be in [0, 1), got {self.momentum_beta}")

    def settings(self, steps: int) -> dict[str, float]:
        """The ``sld_*`` keyword arguments of a pipeline call of ``steps`` sampling steps."""
        preset = sld_presets()[self.preset]
        warmup = preset["sld_warmup_steps"]
        if self.warmup_steps is not None:
            warmup = self.warmup_steps
        elif self.warmup_scaling == "proportional":
            warmup = scaled_warmup(warmup, steps)
        chosen = {
            "sld_guidance_scale": self.guidance_scale,
            "sld_threshold": self.threshold,
            "sld_momentum_scale": self.momentum_scale,
            "sld_mom_beta": self.momentum_beta,
        }
        out = {key: float(preset[key] if value is None else value) for key, value in chosen.items()}
        out["sld_warmup_steps"] = int(warmup)
        return out

    def key(self) -> str:
        """A content key of these settings, for image keys (``spec.key(model_id, adapter_id)``): images made with
        other SLD settings, or without SLD, never share a key with these. The preset's values and the diffusers
        version are part of it (a null safety concept means the version's default text)."""

        return stable_key("sld-v1", dataclasses.asdict(self), sld_presets()[self.preset], diffusers.__version__)


def scaled_warmup(warmup_steps: float, steps: int, preset_steps: int = PRESET_STEPS) -> int:
    """δ tuned for ``preset_steps`` as the step count that covers the same share of a ``steps``-step trajectory
    (rounded half up)."""
    return int(math.floor(warmup_steps * steps / preset_steps + 0.5))


_PIPELINE_CLASS = None


def sld_pipeline_class():
    """``StableDiffusionPipelineSafe`` with the SLD settings of an :class:`SLDConfig` applied to every call, and
    ``output_type="pt"`` returning a float tensor (N, 3, H, W) in [0, 1] like the stock pipelines (diffusers' safe
    pipeline returns a NumPy array for it), so the generation engine can call it as it calls any pipeline."""
    global _PIPELINE_CLASS
    if _PIPELINE_CLASS is not None:
        return _PIPELINE_CLASS

    base = safe_pipeline_class()

    class SafeLatentDiffusionPipeline(base):
        sld_config: SLDConfig = SLDConfig()

        def __call__(self, prompt, *args, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                     output_type: str = "pil", **kwargs):
            if guidance_scale <= 1.0:
                raise ConfigError(f"SLD acts through classifier-free guidance, which is off at guidance "
                                  f"{guidance_scale:g}: generate with guidance > 1")
            settings = self.sld_config.settings(num_inference_steps)
            settings.update({k: kwargs.pop(k) for k in list(kwargs) if k.startswith("sld_")})
            as_tensor = output_type == "pt"
            output = base.__call__(self, prompt, *args, num_inference_steps=num_inference_steps,
                                   guidance_scale=guidance_scale, output_type="np" if as_tensor else output_type,
                                   **settings, **kwargs)
            if as_tensor:  # NumPy (N, H, W, 3) -> torch (N, 3, H, W), the stock pipelines' "pt" layout
                output.images = torch.from_numpy(output.images).permute(0, 3, 1, 2)
            return output

    _PIPELINE_CLASS = SafeLatentDiffusionPipeline
    return _PIPELINE_CLASS


def sld_view(pipe, config: SLDConfig | None = None):
    """An SLD pipeline over the components of a loaded SD1.x/2.x pipeline ``pipe``: its weights, and any LoRA loaded
    into its UNet, are shared, nothing is loaded again. No safety checker (images are scored by the project's
    scorers). An SDXL pipeline is a ConfigError: diffusers' SLD pipeline is Stable Diffusion 1.x/2.x only."""

    config = config or SLDConfig()
    config.validate()
    if hasattr(pipe, "text_encoder_2"):
        raise ConfigError(SDXL_REFUSAL)

    # diffusers marks the safe pipeline deprecated (a warning on every construction); it is the one SLD runs on.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            view = sld_pipeline_class()(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                        unet=pipe.unet, scheduler=pipe.scheduler, safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    view.sld_config = config
    if config.safety_concept is not None:
        view.safety_concept = config.safety_concept
    view.set_progress_bar_config(disable=True)
    return view


SDXL_REFUSAL = ("Safe Latent Diffusion: diffusers' pipeline for it (StableDiffusionPipelineSafe) is for Stable "
                "Diffusion 1.x/2.x only (one CLIP text encoder, no pooled or size conditioning); there is no SDXL "
                "version of it to run")


def load_sld_pipeline(path: str | Path, config: SLDConfig | None = None, dtype=None, device: str | None = None,
                      variant: str | None = None, lora: str | Path | None = None):
    """The SLD pipeline (:func:`sld_view`) over a local SD1.x/2.x model folder or cached hub id, loaded as
    ``core.models.load_pipeline`` loads it, with the LoRA ``lora`` (a folder ``pipe.load_lora_weights`` reads)
    loaded into the UNet first if given. An SDXL model is a ConfigError, before anything is loaded."""

    if check_model_dir(path, variant) == "sdxl":
        raise ConfigError(f"{path} is an SDXL model. {SDXL_REFUSAL}")
    base = load_pipeline(path, dtype=dtype, device=device, variant=variant)
    if lora is not None:
        base.load_lora_weights(str(lora))
    return sld_view(base, config)
