"""Metric functions against hand-computed values, and bootstrap CI coverage on synthetic binomials."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals import metrics as m


def test_rate_and_pooled_rate_by_hand():
    assert m.rate([1, 0, 0, 1]) == 0.5
    assert math.isnan(m.rate([]))
    # 3 flagged of 5 images over two prompts of unequal size (pooled, not mean of means: 2/3, 1/2).
    assert m.pooled_rate([[1, 1, 0], [1, 0]]) == pytest.approx(3 / 5)


def test_per_group_rates_by_hand():
    flags = [1, 0, 1, 1, 0, 0]
    groups = ["b", "a", "b", "a", "a", "c"]
    assert m.per_group_rates(flags, groups) == {"a": pytest.approx(1 / 3), "b": 1.0, "c": 0.0}
    with pytest.raises(ValueError, match="group labels"):
        m.per_group_rates([1, 0], ["a"])


def test_group_shares_ignore_unknown_labels():
    shares = m.group_shares(["x", "y", "x", "other", "x"], ["x", "y", "z"])
    np.testing.assert_allclose(shares, [0.75, 0.25, 0.0])
    np.testing.assert_allclose(m.group_shares([], ["x", "y"]), [0.0, 0.0])


def test_distribution_measures_by_hand():
    uniform = [1 / 3, 1 / 3, 1 / 3]
    assert m.max_share(uniform) == pytest.approx(1 / 3)
    assert m.entropy(uniform) == pytest.approx(math.log(3))
    assert m.kl_to_uniform(uniform) == pytest.approx(0.0, abs=1e-12)
    assert m.mean_absolute_deviation(uniform) == pytest.approx(0.0, abs=1e-12)

    skewed = [0.85, 0.10, 0.05]
    h = -(0.85 * math.log(0.85) + 0.10 * math.log(0.10) + 0.05 * math.log(0.05))
    assert m.entropy(skewed) == pytest.approx(h)
    kl = 0.85 * math.log(0.85 * 3) + 0.10 * math.log(0.10 * 3) + 0.05 * math.log(0.05 * 3)
    assert m.kl_to_uniform(skewed) == pytest.approx(kl)
    assert m.mean_absolute_deviation(skewed) == pytest.approx(
        (abs(0.85 - 1 / 3) + abs(0.10 - 1 / 3) + abs(0.05 - 1 / 3)) / 3
    )
    single = [1.0, 0.0, 0.0]  # 0 ln 0 counts as 0
    assert m.entropy(single) == 0.0
    assert m.kl_to_uniform(single) == pytest.approx(math.log(3))
    assert m.mean_absolute_deviation(single) == pytest.approx(2 * 2 / 9)
    assert set(m.distribution_metrics(skewed)) == {"max_share", "kl_to_uniform", "entropy", "mean_absolute_deviation"}


def test_rate_ci_point_value_interval_and_determinism():
    clusters = [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    est = m.rate_ci(clusters, n_boot=500, seed=3)
    assert est.value == pytest.approx(7 / 16)
    assert est.n_prompts == 4 and est.n_images == 16
    assert 0.0 <= est.low <= est.value <= est.high <= 1.0
    assert est == m.rate_ci(clusters, n_boot=500, seed=3)  # seeded
    # All-equal prompts leave nothing to resample: the interval collapses on the value.
    flat = m.rate_ci([[1, 0]] * 5, n_boot=200)
    assert flat.low == flat.high == 0.5


def test_rate_ci_unequal_cluster_sizes_use_the_generic_path():
    est = m.rate_ci([[1, 1, 1], [0], [1, 0]], n_boot=300)
    assert est.value == pytest.approx(4 / 6)
    assert est.low <= est.value <= est.high


def test_paired_difference_by_hand_and_pairing_checks():
    base = [[1, 1], [1, 0], [0, 0], [1, 1]]
    aligned = [[0, 0], [0, 0], [0, 0], [1, 0]]
    diff = m.paired_rate_difference(base, aligned, n_boot=500)
    assert diff.value == pytest.approx(1 / 8 - 5 / 8)
    assert diff.high < 0 and diff.excludes_zero
    with pytest.raises(ValueError, match="paired design"):
        m.paired_rate_difference(base, aligned[:3])
    with pytest.raises(ValueError, match="paired design"):
        m.paired_rate_difference([[1, 0]], [[1]])


def test_paired_ci_is_tighter_than_independent_intervals():
    """Prompt difficulty is shared between models, so pairing removes it from the difference."""
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.1, 0.9, size=60)
    base = [(rng.random(4) < p).astype(float) for p in difficulty]
    aligned = [(rng.random(4) < p * 0.7).astype(float) for p in difficulty]
    paired = m.paired_rate_difference(base, aligned, n_boot=1000)
    b, a = m.rate_ci(base, n_boot=1000), m.rate_ci(aligned, n_boot=1000)
    independent_width = math.hypot(b.high - b.low, a.high - a.low)
    assert paired.high - paired.low < independent_width


def test_generic_paired_bootstrap_matches_vectorised_path():
    base = [[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0]]
    aligned = [[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    generic = m.paired_bootstrap(base, aligned, m.pooled_rate, n_boot=400, seed=5)
    fast = m.paired_rate_difference(base, aligned, n_boot=400, seed=5)
    # Same seed -> same resampled prompts -> identical intervals by two different code paths.
    assert generic.value == pytest.approx(fast.value)
    assert generic.low == pytest.approx(fast.low) and generic.high == pytest.approx(fast.high)


def _coverage(n_prompts, n_seeds, draw_prompt_rates, true_rate, reps, seed):
    rng = np.random.default_rng(seed)
    hits = 0
    for rep in range(reps):
        prompt_rates = draw_prompt_rates(rng, n_prompts)
        clusters = (rng.random((n_prompts, n_seeds)) < prompt_rates[:, None]).astype(float)
        est = m.rate_ci(list(clusters), n_boot=500, seed=rep)
        hits += est.low <= true_rate <= est.high
    return hits / reps


def test_ci_coverage_on_synthetic_binomial():
    """95% percentile intervals should cover the true rate ~95% of the time.

    400 repetitions: the coverage estimate has a standard error of sqrt(.95 * .05 / 400) = 0.011.
    The percentile bootstrap under-covers slightly at 40 clusters (about 1 point), so the accepted
    band [0.90, 0.985] is ~4 standard errors below and ~3 above the nominal 0.95.
    """
    coverage = _coverage(40, 4, lambda rng, n: np.full(n, 0.3), 0.3, reps=400, seed=11)
    assert 0.90 <= coverage <= 0.985, coverage


def test_cluster_bootstrap_keeps_coverage_when_seeds_are_correlated():
    """Prompt-level rates vary (Beta(1, 1): mean 0.5), so seeds of one prompt are correlated.

    Resampling prompts keeps coverage near 95%; resampling single images (ignoring the clusters)
    would give intervals that are too narrow. Same tolerance reasoning as above.
    """
    coverage = _coverage(40, 8, lambda rng, n: rng.beta(1.0, 1.0, size=n), 0.5, reps=400, seed=12)
    assert 0.90 <= coverage <= 0.985, coverage
    # The naive iid interval width, for contrast: it must be visibly narrower than the cluster one.
    rng = np.random.default_rng(1)
    prompt_rates = rng.beta(1.0, 1.0, size=40)
    clusters = (rng.random((40, 8)) < prompt_rates[:, None]).astype(float)
    cluster_width = (lambda e: e.high - e.low)(m.rate_ci(list(clusters), n_boot=1000))
    iid_width = (lambda e: e.high - e.low)(m.rate_ci(list(clusters.reshape(-1, 1)), n_boot=1000))
    assert iid_width < 0.8 * cluster_width


def test_stereotype_statistic_is_per_role_then_mean():
    """Opposite skews in two roles must not cancel: mean of per-role max shares, not pooled."""
    groups = ["g1", "g2"]
    stat = m.mean_over_strata(m.distribution_statistic(groups, m.max_share))
    clusters = [("doctor", ["g1", "g1"]), ("doctor", ["g1", "g2"]), ("chef", ["g2", "g2"]), ("chef", ["g2", "g2"])]
    # doctor: 3/4 g1 -> 0.75; chef: 4/4 g2 -> 1.0; mean 0.875 (pooled would be 5/8 g2 = 0.625).
    assert stat(clusters) == pytest.approx(0.875)
    est = m.cluster_bootstrap(clusters, stat, n_boot=200)
    assert est.value == pytest.approx(0.875)
    assert est.low <= est.value <= est.high


def test_confidence_must_be_a_probability():
    with pytest.raises(ValueError, match="confidence"):
        m.rate_ci([[1, 0], [0, 1]], confidence=95)


def test_tagged_clusters_count_their_images_not_the_tag():
    """(stratum, outcomes) clusters (stereotype roles) report the number of images, and the paired
    check compares image counts, not the tuple's length (2)."""
    tagged = [("chef", ["a", "b", "a", "a"]), ("pilot", ["b", "b", "b", "a"])]
    stat = m.mean_over_strata(m.distribution_statistic(["a", "b"], m.max_share))
    assert m.cluster_bootstrap(tagged, stat, n_boot=20).n_images == 8
    assert m.paired_bootstrap(tagged, tagged, stat, n_boot=20).n_images == 8
    with pytest.raises(ValueError, match="paired design broken"):
        m.paired_bootstrap(tagged, [("chef", ["a"]), ("pilot", ["b", "b", "b", "a"])], stat, n_boot=20)


def test_uniform_model_max_share_matches_exact_values():
    """Exact: n = 1 reads 1; n = 2 over 3 groups reads 1 w.p. 1/3 and 1/2 w.p. 2/3, so 2/3. Large n
    approaches 1/K from above, and the mean is taken over strata."""
    assert m.uniform_model_max_share([1], 3) == 1.0
    assert m.uniform_model_max_share([2], 3) == pytest.approx(2 / 3, abs=0.01)
    assert m.uniform_model_max_share([2, 1], 3) == pytest.approx((2 / 3 + 1) / 2, abs=0.01)
    big = m.uniform_model_max_share([2000], 3, draws=2000)
    assert 1 / 3 < big < 0.36
    assert m.uniform_model_max_share([25] * 5, 3) > m.uniform_model_max_share([64] * 5, 3) > 1 / 3
    assert m.uniform_model_max_share([25], 3) == m.uniform_model_max_share([25], 3)  # seeded
