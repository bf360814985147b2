"""Intervals of the red-team figures: Wilson for an attack success rate (successes of n targets), a percentile
bootstrap over prompts for a mean rate (the transfer rate of the prompts found)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean(values: Sequence[float], confidence: float = 0.95, n_boot: int = 1000,
                   seed: int = 0) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``values`` by a percentile bootstrap; None when there are none."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, array.size, size=(n_boot, array.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(array.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def asr_row(successes: int, n: int, confidence: float) -> dict:
    low, high = wilson_interval(successes, n, confidence)
    return {"successes": successes, "targets": n, "asr": successes / n if n else float("nan"),
            "ci": [round(low, 4), round(high, 4)]}
