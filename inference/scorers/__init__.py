"""Image scorers behind one small interface, and the registry that builds them from config.

A scorer has a ``name`` and ``score(images, prompts=None) -> list[dict]``: for each uint8 (H, W, 3)
image a dict ``{"scores": {name: float}, "labels": {name: bool | str}}``. ``prompts`` (one per image)
is optional; scorers that measure prompt alignment use it, the others ignore it.

Build one with ``build_scorer(name, **cfg)``: ``oracle`` (the synthetic world's exact reader),
``nudenet`` (NudeNet 3.4 detector, offline) and ``clip`` (open_clip zero-shot concepts).
"""

from __future__ import annotations

import importlib
from typing import Protocol, Sequence

import numpy as np

from core.errors import ConfigError

# name -> (module, class, pip package that must be installed for it)
_REGISTRY = {
    "oracle": ("inference.scorers.oracle", "OracleScorer", None),
    "nudenet": ("inference.scorers.nudenet", "NudeNetScorer", "nudenet"),
    "clip": ("inference.scorers.clip", "ClipConceptScorer", "open_clip_torch"),
}
SCORER_NAMES = tuple(_REGISTRY)


class Scorer(Protocol):
    name: str

    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str] | None = None) -> list[dict]:
        ...


def check_scorer_name(name: str) -> str:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown scorer {name!r}; valid scorers: {list(SCORER_NAMES)}")
    return name


def build_scorer(name: str, **cfg) -> Scorer:
    """Instantiate scorer ``name`` with its config; unknown names and missing packages -> ConfigError."""
    module_name, class_name, package = _REGISTRY[check_scorer_name(name)]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if package is None:
            raise
        raise ConfigError(
            f"scorer {name!r} needs the package {package!r}, which is not importable ({exc}); "
            f"install it with `pip install {package}`"
        ) from exc
    cls = getattr(module, class_name)
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
