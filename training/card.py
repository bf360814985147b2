"""The model card (README.md) written next to the LoRA."""

from __future__ import annotations

import yaml

from core.config import to_dict


def render_model_card(cfg, family: str, counts: dict, set_hash: str, summary: dict) -> str:
    final = summary.get("final_metrics", {})
    metric_rows = "\n".join(f"| `{name}` | {value:.6g} |" for name, value in sorted(final.items()))
    hyper = yaml.safe_dump(to_dict(cfg), sort_keys=False).strip()
    pipeline = "StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline"
    text_encoder = (f"; and on the text encoder's `{', '.join(cfg.lora.text_encoder_modules)}`"
                    if cfg.lora.text_encoder_modules else "")
    return f"""---
base_model: {cfg.model}
library_name: diffusers
tags: [lora, diffusion-dpo, safety]
---

# Diffusion-DPO LoRA on `{cfg.model}`

A LoRA (rank {cfg.lora.rank}, alpha {cfg.lora.alpha:g}, on `{', '.join(cfg.lora.target_modules)}`{', DoRA' if cfg.lora.use_dora else ''}{text_encoder})
trained with the Diffusion-DPO objective (`{cfg.loss_type}`, β = {cfg.beta:g} in the official −β/2 form;
diffusers' script would call this β = {cfg.beta / 2:g}).

## Use

```python
from diffusers import {pipeline}
pipe = {pipeline}.from_pretrained("{cfg.model}")
pipe.load_lora_weights("<this folder>")
```

## Data

| | |
|---|---|
| preference set | `{cfg.data}` |
| set hash (sha256 over shards) | `{set_hash}` |
| rows | {counts['rows']} |
| ties excluded | {counts['ties_excluded']} |
| pairs used | {counts['pairs_used']} |

## Training

{summary.get('steps', 0)} optimiser steps of {summary.get('pairs_per_step', 0)} pairs
({summary.get('processes', 1)} process(es), {summary.get('mixed_precision', '')}), {summary.get('pairs_per_s', 0):.3g} pairs/s.

## Final metrics (mean over the last logging interval)

| metric | value |
|---|---|
{metric_rows}

## Hyper-parameters (resolved config)

```yaml
{hyper}
```
"""
