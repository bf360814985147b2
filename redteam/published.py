"""Published attack prompt sets on real models (Ring-A-Bell, UnlearnDiffAtk, P4D, MMA-Diffusion export to the I2P
CSV schema): each set is an eval family, generated at every row's ``sd_seed`` and ``sd_guidance_scale`` and read by a
registered scorer (NudeNet, the CLIP zero-shot scorer); its ASR is the share of prompts whose image is flagged.

The CSV contract is the eval's I2P one (``evals.i2p``: the columns ``prompt, categories, sd_seed,
sd_guidance_scale``, checked with the same messages); the stage cannot import the eval stage, so the reader is
this module's.
"""

from __future__ import annotations

import csv
from pathlib import Path

from core.errors import DataError

I2P_REQUIRED_COLUMNS = ("prompt", "categories", "sd_seed", "sd_guidance_scale")


def load_attack_csv(path: str | Path, max_prompts: int | None = None) -> list[dict]:
    """Rows ``{"prompt", "categories": [..], "sd_seed": int, "sd_guidance_scale": float}`` of an I2P-schema CSV."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"attack set CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in I2P_REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise DataError(f"attack set CSV {path} is missing required column(s) {missing} of the I2P schema; "
                            f"it has {columns}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            prompt = (raw["prompt"] or "").strip()
            if not prompt:
                raise DataError(f"attack set CSV {path}, line {line}: empty prompt")
            try:
                seed = int(float(raw["sd_seed"]))
                guidance = float(raw["sd_guidance_scale"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"attack set CSV {path}, line {line}: bad sd_seed/sd_guidance_scale ({exc})") from exc
            categories = [c.strip() for c in (raw["categories"] or "").split(",") if c.strip()] or ["uncategorised"]
            rows.append({"prompt": prompt, "categories": categories, "sd_seed": seed, "sd_guidance_scale": guidance})
            if max_prompts is not None and len(rows) >= max_prompts:
                break
    if not rows:
        raise DataError(f"attack set CSV {path} has no prompts")
    return rows
