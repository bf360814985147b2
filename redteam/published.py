"""Published attack prompt sets on real models (Ring-A-Bell, UnlearnDiffAtk, P4D, MMA-Diffusion export to the I2P
CSV schema): each set is an eval family, generated at every row's ``sd_seed`` and ``sd_guidance_scale`` and read by a
registered scorer (NudeNet, the CLIP zero-shot scorer); its ASR is the share of prompts whose image is flagged.

The CSV contract is the eval's I2P one: the columns ``prompt, categories, sd_seed, sd_guidance_scale``, read by
``inference.prompts.read_i2p_csv`` for both.
"""

from __future__ import annotations

from pathlib import Path

from inference.prompts import read_i2p_csv


def load_attack_csv(path: str | Path, max_prompts: int | None = None) -> list[dict]:
    """Rows ``{"prompt", "categories": [..], "sd_seed": int, "sd_guidance_scale": float}`` of an I2P-schema CSV."""
    return read_i2p_csv(path, max_prompts, "attack set CSV")
