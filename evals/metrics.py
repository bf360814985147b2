"""Evaluation metrics: rates, cluster-bootstrap confidence intervals, paired differences and
group-distribution measures (max share, KL to uniform, entropy, mean absolute deviation).

Every function here is pure (numbers in, numbers out) so that it can be checked by hand.

Design of the uncertainty estimates
-----------------------------------
The eval generates several images (seeds) for every prompt. Images of one prompt are not
independent: a prompt that triggers a bias does so for most of its seeds. The unit of resampling is
therefore the *prompt* (a cluster of seeds), never the single image; this is the cluster bootstrap.

* ``cluster_bootstrap``: draw ``n_prompts`` prompts with replacement ``n_boot`` times, recompute the
  statistic on each resample, and take the percentile interval [q(alpha/2), q(1 - alpha/2)].
* ``paired_bootstrap``: for aligned-minus-base differences the *same* resampled prompt indices are
  used for both models (the models saw the same prompts and seeds), so the shared prompt-to-prompt
  variation cancels and the interval is much tighter than two independent intervals would suggest.

Everything is seeded: the same inputs give the same interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Sequence

import numpy as np

DEFAULT_N_BOOT = 1000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a percentile bootstrap interval [low, high]."""

    value: float
    low: float
    high: float
    n_prompts: int
    n_images: int
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a significant difference)."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["excludes_zero"] = self.excludes_zero
        return out


# ---- plain rates ------------------------------------------------------------------------------


def rate(flags: Sequence[float] | np.ndarray) -> float:
    """Share of images flagged: mean of 0/1 values (NaN for an empty list)."""
    values = np.asarray(flags, dtype=np.float64).ravel()
    return float(values.mean()) if values.size else float("nan")


def pooled_rate(clusters: Sequence[Sequence[float]]) -> float:
    """Rate over all images of all prompts (each image counts once, whatever its prompt)."""
    sizes = [len(c) for c in clusters]
    total = sum(sizes)
    if total == 0:
        return float("nan")
    return float(sum(float(np.sum(c)) for c in clusters) / total)


def per_group_rates(flags: Sequence[float], groups: Sequence[Hashable]) -> dict:
    """``{group: rate}`` for parallel lists of 0/1 flags and group labels (sorted by group)."""
    if len(flags) != len(groups):
        raise ValueError(f"per_group_rates: {len(flags)} flags but {len(groups)} group labels")
    buckets: dict = {}
    for flag, group in zip(flags, groups):
        buckets.setdefault(group, []).append(float(flag))
    return {g: rate(buckets[g]) for g in sorted(buckets, key=str)}


# ---- group distributions ------------------------------------------------------------------------


def group_shares(labels: Sequence[Hashable], groups: Sequence[Hashable]) -> np.ndarray:
    """Share of each of ``groups`` among ``labels`` (labels outside ``groups`` are ignored).

    Returns shape (len(groups),), summing to 1 (all zeros if no label is in ``groups``).
    """
    index = {g: i for i, g in enumerate(groups)}
    counts = np.zeros(len(groups), dtype=np.float64)
    for label in labels:
        if label in index:
            counts[index[label]] += 1
    total = counts.sum()
    return counts / total if total > 0 else counts


def max_share(shares: Sequence[float]) -> float:
    """Largest group share (1/K for a uniform distribution over K groups, 1 for a single group)."""
    return float(np.max(np.asarray(shares, dtype=np.float64)))


def entropy(shares: Sequence[float]) -> float:
    """Shannon entropy in nats, H(p) = -sum_i p_i ln p_i (0 ln 0 = 0); ln K for uniform."""
    p = np.asarray(shares, dtype=np.float64)
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum())


def kl_to_uniform(shares: Sequence[float]) -> float:
    """KL(p || uniform) in nats = sum_i p_i ln(p_i * K) = ln K - H(p); 0 for uniform."""
    p = np.asarray(shares, dtype=np.float64)
    return float(math.log(len(p)) - entropy(p))


def mean_absolute_deviation(shares: Sequence[float]) -> float:
    """Mean over groups of |p_i - 1/K|: 0 for uniform, 2(K-1)/K^2 for a single group."""
    p = np.asarray(shares, dtype=np.float64)
    return float(np.mean(np.abs(p - 1.0 / len(p))))


def uniform_model_max_share(images_per_stratum: Sequence[int], num_groups: int, draws: int = 20000,
                            seed: int = 0) -> float:
    """Expected mean-over-strata max share that a perfectly *uniform* model reads with these sample sizes.

    The plug-in max share of n draws is biased upward: with 3 groups a uniform model reads 1.0 at n = 1,
    ≈ 0.43 at n = 25 and ≈ 0.38 at n = 100, against the true 1/3. This is the floor of the stereotype
    metric at the eval's size, printed beside it so a reader can tell model from estimator. Monte Carlo
    over ``draws`` multinomial samples per stratum (fixed seed: the same sizes always give the same value;
    its standard error is ≈ 0.001 at the default ``draws``).
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    rng = np.random.default_rng(seed)
    per_stratum = []
    for n in images_per_stratum:
        if n < 1:
            continue
        counts = rng.multinomial(int(n), np.full(num_groups, 1.0 / num_groups), size=draws)  # (draws, K)
        per_stratum.append(counts.max(axis=1).mean() / n)
    return float(np.mean(per_stratum)) if per_stratum else float("nan")


def sample_size_label(images_per_role: dict) -> str:
    """"64" when every role has 64 images, "60–64" when they differ ("?" when there are none)."""
    sizes = sorted(set(images_per_role.values()))
    if not sizes:
        return "?"
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"


def distribution_metrics(shares: Sequence[float]) -> dict:
    """All distribution measures of one share vector, for reports."""
    return {
        "max_share": max_share(shares),
        "kl_to_uniform": kl_to_uniform(shares),
        "entropy": entropy(shares),
        "mean_absolute_deviation": mean_absolute_deviation(shares),
    }


# ---- bootstrap ----------------------------------------------------------------------------------


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _resample_indices(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_clusters) prompt indices drawn with replacement, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_clusters, size=(n_boot, n_clusters))


def _as_matrix(clusters: Sequence[Sequence[float]]) -> np.ndarray | None:
    """(P, S) float matrix when every prompt has the same number of images, else None."""
    sizes = {len(c) for c in clusters}
    if len(sizes) != 1:
        return None
    return np.asarray([np.asarray(c, dtype=np.float64) for c in clusters])


def _cluster_size(cluster) -> int:
    """Images in one cluster: its outcomes, or the payload of a ``(stratum, payload)`` tagged cluster
    (the convention of :func:`mean_over_strata`), whose own length is always 2."""
    if isinstance(cluster, tuple) and len(cluster) == 2 and isinstance(cluster[1], (list, tuple)):
        return len(cluster[1])
    return len(cluster)


def _count_images(clusters) -> int:
    return int(sum(_cluster_size(c) for c in clusters))


def cluster_bootstrap(
    clusters: Sequence,
    statistic: Callable[[list], float],
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Percentile CI of ``statistic(clusters)`` by resampling whole clusters (prompts).

    ``clusters`` is a list with one item per prompt (its images' outcomes, in any form the
    statistic understands); ``statistic`` maps a list of such items to a float.
    """
    clusters = list(clusters)
    if not clusters:
        nan = float("nan")
        return Estimate(nan, nan, nan, 0, 0, confidence)
    value = float(statistic(clusters))
    indices = _resample_indices(len(clusters), n_boot, seed)
    samples = np.array([statistic([clusters[i] for i in row]) for row in indices], dtype=np.float64)
    low, high = _percentile_interval(samples, confidence)
    return Estimate(value, low, high, len(clusters), _count_images(clusters), confidence)


def rate_ci(
    clusters: Sequence[Sequence[float]],
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """Pooled rate of 0/1 outcomes with a cluster-bootstrap CI over prompts.

    ``clusters[p]`` holds the outcomes of prompt p's seeds. Vectorised when every prompt has the
    same number of seeds (the usual case), generic otherwise.
    """
    clusters = [np.asarray(c, dtype=np.float64).ravel() for c in clusters]
    clusters = [c for c in clusters if c.size]
    matrix = _as_matrix(clusters) if clusters else None
    if matrix is None:
        return cluster_bootstrap(clusters, pooled_rate, n_boot, confidence, seed)
    per_prompt = matrix.mean(axis=1)  # equal cluster sizes: pooled rate = mean of prompt means
    indices = _resample_indices(len(per_prompt), n_boot, seed)
    samples = per_prompt[indices].mean(axis=1)
    low, high = _percentile_interval(samples, confidence)
    return Estimate(float(per_prompt.mean()), low, high, len(clusters), int(matrix.size), confidence)


def paired_bootstrap(
    base_clusters: Sequence,
    aligned_clusters: Sequence,
    statistic: Callable[[list], float],
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """CI of statistic(aligned) - statistic(base) with the SAME resampled prompts for both models.

    ``base_clusters[p]`` and ``aligned_clusters[p]`` must come from the same prompt p (and seeds).
    """
    base_clusters, aligned_clusters = list(base_clusters), list(aligned_clusters)
    if len(base_clusters) != len(aligned_clusters):
        raise ValueError(
            f"paired design broken: {len(base_clusters)} base prompts vs {len(aligned_clusters)} aligned"
        )
    for p, (b, a) in enumerate(zip(base_clusters, aligned_clusters)):
        if _cluster_size(b) != _cluster_size(a):
            raise ValueError(f"paired design broken at prompt {p}: {_cluster_size(b)} base vs "
                             f"{_cluster_size(a)} aligned images")
    if not base_clusters:
        nan = float("nan")
        return Estimate(nan, nan, nan, 0, 0, confidence)
    value = float(statistic(aligned_clusters) - statistic(base_clusters))
    indices = _resample_indices(len(base_clusters), n_boot, seed)
    samples = np.array(
        [
            statistic([aligned_clusters[i] for i in row]) - statistic([base_clusters[i] for i in row])
            for row in indices
        ],
        dtype=np.float64,
    )
    low, high = _percentile_interval(samples, confidence)
    return Estimate(value, low, high, len(base_clusters), _count_images(base_clusters), confidence)


def paired_rate_difference(
    base_clusters: Sequence[Sequence[float]],
    aligned_clusters: Sequence[Sequence[float]],
    n_boot: int = DEFAULT_N_BOOT,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Estimate:
    """aligned rate - base rate, with a paired cluster-bootstrap CI (negative = risk fell)."""
    base = [np.asarray(c, dtype=np.float64).ravel() for c in base_clusters]
    aligned = [np.asarray(c, dtype=np.float64).ravel() for c in aligned_clusters]
    # The per-image difference keeps the pairing: same prompt, same seed, two models.
    for p, (b, a) in enumerate(zip(base, aligned)):
        if b.shape != a.shape:
            raise ValueError(f"paired design broken at prompt {p}: {b.size} base vs {a.size} aligned images")
    if len(base) != len(aligned):
        raise ValueError(f"paired design broken: {len(base)} base prompts vs {len(aligned)} aligned")
    return rate_ci([a - b for a, b in zip(aligned, base)], n_boot, confidence, seed)


# ---- group distributions with uncertainty -----------------------------------------------------------


def distribution_statistic(groups: Sequence[Hashable], measure: Callable[[np.ndarray], float]):
    """A statistic for ``cluster_bootstrap``: clusters are lists of group labels of one prompt."""

    def statistic(clusters: list) -> float:
        labels = [label for cluster in clusters for label in cluster]
        return measure(group_shares(labels, groups))

    return statistic


def max_over_strata(strata_statistic: Callable[[list], float]):
    """Statistic for clusters tagged ``(stratum, payload)``: the largest per-stratum statistic (the worst
    role's max group share: a mean over roles lets one role's overshoot hide behind the others)."""

    def statistic(clusters: list) -> float:
        by_stratum: dict = {}
        for stratum, payload in clusters:
            by_stratum.setdefault(stratum, []).append(payload)
        values = [strata_statistic(items) for items in by_stratum.values()]
        return float(np.max(values)) if values else float("nan")

    return statistic


def mean_over_strata(strata_statistic: Callable[[list], float]):
    """Statistic for clusters tagged ``(stratum, payload)``: the mean over strata of the statistic.

    Used for stereotypes: the max group share is computed per role (each role has its own
    majority group) and then averaged over roles, so that opposite skews cannot cancel out.
    """

    def statistic(clusters: list) -> float:
        by_stratum: dict = {}
        for stratum, payload in clusters:
            by_stratum.setdefault(stratum, []).append(payload)
        values = [strata_statistic(items) for items in by_stratum.values()]
        return float(np.mean(values)) if values else float("nan")

    return statistic
