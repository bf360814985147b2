"""Image scorers behind one small interface, and the registry that builds them from config.

A scorer has a ``name`` and ``score(images, prompts=None) -> list[dict]``: for each uint8 (H, W, 3)
image a dict ``{"scores": {name: float}, "labels": {name: bool | str}}``. ``prompts`` (one per image)
is optional; scorers that measure prompt alignment use it, the others ignore it.

Build one with ``build_scorer(name, **cfg)``. Scorers are registered by name in :mod:`core.plugins` (kind
``scorer``): ``nudenet`` (NudeNet 3.4 detector, offline) and ``clip`` (open_clip zero-shot concepts) here; a
plug-in registers its own (the synthetic world's exact reader, ``oracle``).
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from core import plugins
from core.errors import ConfigError

# Imported on first use: a scorer's model and package load only when a config asks for it.
plugins.register("scorer", "nudenet", "inference.scorers.nudenet:NudeNetScorer", requires="nudenet")
plugins.register("scorer", "clip", "inference.scorers.clip:ClipConceptScorer", requires="open_clip_torch")


class Scorer(Protocol):
    name: str

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str] | None = None) -> list[dict]:
        ...


def check_scorer_name(name: str) -> str:
    """``name`` if a scorer is registered under it; else ConfigError listing the registered scorers."""
    plugins.registration("scorer", name)
    return name


def build_scorer(name: str, **cfg) -> Scorer:
    """Instantiate scorer ``name`` with its config; unknown names and missing packages -> ConfigError."""
    cls = plugins.lookup("scorer", name)
    try:
        return cls(**cfg)
    except TypeError as exc:
        raise ConfigError(f"scorer {name!r}: bad options {sorted(cfg)} ({exc})") from exc


def check_images(images: Sequence[np.ndarray], who: str) -> list[np.ndarray]:
    """Validate a batch of uint8 (H, W, 3) images; name the scorer and the bad index on failure."""
    out = []
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"{who}: image {i} must be uint8 (H, W, 3), got {array.dtype} {array.shape}")
        out.append(array)
    return out
