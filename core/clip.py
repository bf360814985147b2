"""Load local open_clip models (synthetic or real) and compute CLIP scores.

One code path for both: the synthetic CLIP is a folder with ``<name>.json`` (an open_clip model config)
and ``<name>.safetensors``; a real model is an architecture name (``ViT-L-14``, ``ViT-H-14``) plus a local
``.safetensors`` checkpoint. Either way the model is built by ``open_clip.create_model_and_transforms``
with ``pretrained=<local file>``. Pickled checkpoints (.bin/.pt) are refused: safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from core.errors import ModelPathError


@dataclass
class ClipBundle:
    model: Any  # open_clip.CLIP, eval mode
    preprocess: Any  # PIL image -> float tensor (3, S, S)
    tokenizer: Any  # list[str] -> long tensor (N, context_length)
    name: str
    device: str = "cpu"


def _find_config_and_weights(folder: Path) -> tuple[str, Path, Path]:
    configs = []
    for candidate in sorted(folder.glob("*.json")):
        try:
            cfg = json.loads(candidate.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            configs.append(candidate)
    if not configs:
        raise ModelPathError(
            f"CLIP folder {folder} is incomplete: no open_clip model config (<name>.json with embed_dim, "
            "vision_cfg, text_cfg)"
        )
    config = configs[0]
    weights = folder / f"{config.stem}.safetensors"
    if not weights.is_file():
        others = sorted(p.name for p in folder.glob("*.safetensors"))
        if len(others) != 1:
            raise ModelPathError(f"CLIP folder {folder} is incomplete: missing {weights.name}")
        weights = folder / others[0]
    return config.stem, config, weights


def resolve_clip(path: str | Path, model_name: str | None = None) -> tuple[str, Path, Path | None]:
    """(open_clip model name, weights file, config file or None) for a local CLIP, validated."""
    path = Path(path)
    if not path.exists():
        raise ModelPathError(f"CLIP model path {path} does not exist")
    if path.is_dir():
        name, config, weights = _find_config_and_weights(path)
        return name, weights, config
    if path.suffix != ".safetensors":
        raise ModelPathError(
            f"CLIP checkpoint {path} is not a .safetensors file; pickled checkpoints are never loaded "
            "(convert it to safetensors first)"
        )
    if not model_name:
        raise ModelPathError(f"CLIP checkpoint {path} needs an architecture name (e.g. ViT-L-14)")
    return model_name, path, None


def load_clip(path: str | Path, model_name: str | None = None, device: str = "cpu") -> ClipBundle:
    """Load a local open_clip model exactly as a real local checkpoint would be loaded."""
    name, weights, config = resolve_clip(path, model_name)
    if config is not None:
        open_clip.add_model_config(config)
    if name not in open_clip.list_models():
        raise ModelPathError(f"open_clip does not know the architecture {name!r}")
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(weights), device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return ClipBundle(model=model, preprocess=preprocess, tokenizer=tokenizer, name=name, device=device)


def encode_images(bundle: ClipBundle, images: list[np.ndarray], batch_size: int = 64):
    """uint8 (H, W, 3) images -> L2-normalised embeddings (N, D)."""
    feats = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = torch.stack([bundle.preprocess(Image.fromarray(img)) for img in chunk]).to(bundle.device)
            emb = bundle.model.encode_image(pixels).float()
            feats.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(feats) if feats else torch.zeros(0)


def encode_texts(bundle: ClipBundle, texts: list[str], batch_size: int = 256):
    """Strings -> L2-normalised embeddings (N, D)."""
    feats = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = bundle.tokenizer(texts[start : start + batch_size]).to(bundle.device)
            emb = bundle.model.encode_text(tokens).float()
            feats.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(feats) if feats else torch.zeros(0)


def clip_score(bundle: ClipBundle, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
    """CLIP score per (image, text) pair: max(100 * cos(img, text), 0) (Hessel et al. 2021)."""
    if len(images) != len(texts):
        raise ValueError(f"clip_score needs one text per image, got {len(images)} images, {len(texts)} texts")
    img = encode_images(bundle, images)
    txt = encode_texts(bundle, texts)
    cos = (img * txt).sum(-1).numpy()
    return np.maximum(100.0 * cos, 0.0)
