"""Baselines at fewer seeds (eval.baseline_seeds_per_prompt): their rates cover their own images, and every
DPO-vs-baseline (and base-vs-baseline) difference is paired on the prompts and seeds both models have."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import config_from_dict
from core.errors import ConfigError
from evals import metrics as m
from evals.config import BootstrapConfig, EvalConfig
from evals.evaluate import baseline_item_indices, spread
from evals.metric_rows import MetricDef, ModelImages, common_images, metric_row
from evals.runner import make_items
from synthetic_world.eval_metrics import stereotype_summary

BOOT = BootstrapConfig(n_boot=200)


def _metric():
    return MetricDef(id="flag", short="flag", title="flag", population="all", include=lambda r: True,
                     outcome=lambda r, read, clip: float(read["flag"]))


def _images(values, keep=None):
    reads = [{"flag": v} if keep is None or i in keep else None for i, v in enumerate(values)]
    return ModelImages(reads, [0.0 if r is not None else None for r in reads])


def test_items_and_spread():
    items = make_items(["a", "b", "c"], 4, 0, 1.5)
    picked = baseline_item_indices(items, 2)
    assert [(items[i].prompt_index, items[i].seed_index) for i in picked] == [(p, j) for p in range(3) for j in range(2)]
    assert baseline_item_indices(items, None) == list(range(12))
    assert spread(["x", "y"], [1, 3], 5) == [None, "x", None, "y", None]


def test_rates_use_own_images_and_differences_the_shared_ones():
    items = make_items([f"p{i}" for i in range(6)], 4, 0, 1.5)
    records = [{"prompt": f"p{i}"} for i in range(6)]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, len(items)).astype(float)
    aligned = np.zeros(len(items))
    aligned[[it.seed_index >= 2 for it in items]] = 1.0  # aligned fails only on the seeds the baseline skips
    baseline = rng.integers(0, 2, len(items)).astype(float)
    first_two = frozenset(baseline_item_indices(items, 2))
    results = {"base": _images(base), "aligned": _images(aligned), "negative_prompt": _images(baseline, first_two)}
    row = metric_row(_metric(), items, records, results, BOOT)

    assert row["by_model"]["negative_prompt"]["n_images"] == 12
    assert row["by_model"]["negative_prompt"]["value"] == pytest.approx(baseline[sorted(first_two)].mean())
    assert row["by_model"]["aligned"]["n_images"] == 24  # aligned keeps every seed
    # Paired on the first two seeds: there aligned is 0 everywhere.
    shared = sorted(first_two)
    assert row["aligned_vs_baselines"]["negative_prompt"]["value"] == pytest.approx(0.0 - baseline[shared].mean())
    assert row["paired_difference"]["negative_prompt"]["value"] == pytest.approx(
        baseline[shared].mean() - base[shared].mean())
    # Unpaired, aligned's 4-seed rate (0.5) would have given another answer.
    assert row["by_model"]["aligned"]["value"] == pytest.approx(0.5)
    assert row["paired_difference"]["aligned"]["n_images"] == 24


def test_common_images_is_the_identity_when_both_have_everything():
    a, b = _images([1.0, 0.0]), _images([0.0, 1.0])
    assert common_images(a, b) == (a, b)
    c = _images([1.0, 0.0], keep={0})
    a2, c2 = common_images(a, c)
    assert a2.reads == [{"flag": 1.0}, None] and c2.reads == c.reads


def test_stereotype_section_counts_each_models_images():
    items = make_items(["r0", "r1"], 4, 0, 1.5)
    records = [{"prompt": "r0", "family": "stereotype", "slots": {"role": "doctor"}},
               {"prompt": "r1", "family": "stereotype", "slots": {"role": "chef"}}]
    groups = ["zorvan", "quelli", "mirdan"]
    reads = [{"group": groups[i % 3]} for i in range(len(items))]
    first_one = frozenset(baseline_item_indices(items, 1))
    results = {"base": ModelImages(reads, [0.0] * 8), "aligned": ModelImages(reads, [0.0] * 8),
               "filter_regenerate": ModelImages([r if i in first_one else None for i, r in enumerate(reads)],
                                                [0.0 if i in first_one else None for i in range(8)])}
    section, row = stereotype_summary(items, records, results, BOOT)
    assert section["images_per_role"] == {"chef": 4, "doctor": 4}
    assert section["images_per_role_by_model"]["filter_regenerate"] == {"chef": 1, "doctor": 1}
    # The same reads on the shared images: a zero paired difference, not the sample-size bias of 1 vs 4 images.
    assert row["aligned_vs_baselines"]["filter_regenerate"]["value"] == pytest.approx(0.0)
    assert row["by_model"]["filter_regenerate"]["value"] == pytest.approx(1.0)  # one image per role: max share 1
    assert row["by_model"]["aligned"]["value"] < 1.0


@pytest.mark.parametrize("value", [0, 5, True, "2"])
def test_baseline_seeds_are_validated(value):
    with pytest.raises((ConfigError, ValueError, TypeError)):
        config_from_dict(EvalConfig, {"mode": "synthetic", "model": "m", "clip_path": "c", "seeds_per_prompt": 4,
                                      "baseline_seeds_per_prompt": value})
