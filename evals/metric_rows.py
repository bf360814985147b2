"""Metric definitions and their summary rows: estimates with cluster-bootstrap CIs (prompts are the clusters),
paired differences against the base model, per-group breakdowns and bars.

Each metric is a :class:`MetricDef`: which prompt records it covers, and the outcome of one image (0/1 for rates,
a float for CLIP score) from the record, the image's read (a scorer's labels) and its CLIP score.
:func:`metric_row` turns the reads of every model into one row of summary.json; :func:`evaluate_bar` checks the
aligned model against the row's bar (``MetricDef.bar``: what the aligned model must reach). An eval suite
(:mod:`evals.suite`) defines its metrics with these; the I2P path (:mod:`evals.i2p`) too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from evals import metrics as m

Outcome = Callable[[dict, dict, float], "float | None"]


@dataclass(frozen=True)
class MetricDef:
    id: str
    short: str  # axis / console label
    title: str
    population: str  # which prompts, in words
    include: Callable[[dict], bool]
    outcome: Outcome
    direction: str = "lower"  # lower / higher is better
    bar: dict | None = None  # {"op": "<=" | ">=" | "within" | "within %", "value": x}
    improvement: bool = False  # the paired CI of aligned - base must exclude 0
    breakdown: Callable | None = None  # per-image {label: value} for the per-group table
    breakdown_include: Callable[[dict], bool] | None = None
    plot: bool = True  # on the 0..1 rate chart


@dataclass
class ModelImages:
    """One model's images in item order: reads (the labels of the scorer that reads them, e.g. an eval suite's
    reader) and CLIP scores (parallel lists). None at an item the model was not run on (a baseline at fewer
    seeds: eval.baseline_seeds_per_prompt)."""

    reads: list[dict | None]
    clip: list[float | None]

    def made(self) -> frozenset[int]:
        """Indices of the items this model has an image for."""
        return frozenset(i for i, read in enumerate(self.reads) if read is not None)

    def only(self, indices: frozenset[int]) -> "ModelImages":
        """The same images with every item outside ``indices`` left out (None)."""
        keep = [i in indices for i in range(len(self.reads))]
        return ModelImages([r if k else None for r, k in zip(self.reads, keep)],
                           [c if k else None for c, k in zip(self.clip, keep)])


def common_images(a: ModelImages, b: ModelImages) -> tuple[ModelImages, ModelImages]:
    """Both models restricted to the items both have images for: a paired comparison uses the same
    prompts and seeds on each side (the identity when both have every item)."""
    shared = a.made() & b.made()
    if shared == a.made() == b.made():
        return a, b
    return a.only(shared), b.only(shared)


def _clusters(metric: MetricDef, items, records, images: ModelImages) -> dict[int, list[float]]:
    clusters: dict[int, list[float]] = {}
    for item, read, clip in zip(items, images.reads, images.clip):
        record = records[item.prompt_index]
        if read is None or not metric.include(record):
            continue
        value = metric.outcome(record, read, clip)
        if value is not None:
            clusters.setdefault(item.prompt_index, []).append(float(value))
    return clusters


def _breakdown(metric: MetricDef, items, records, images: ModelImages) -> dict:
    buckets: dict[str, list[float]] = {}
    for item, read, clip in zip(items, images.reads, images.clip):
        record = records[item.prompt_index]
        if read is None or (metric.breakdown_include and not metric.breakdown_include(record)):
            continue
        for label, value in metric.breakdown(record, read, clip).items():
            buckets.setdefault(label, []).append(value)
    return {label: m.rate(values) for label, values in sorted(buckets.items())}


def metric_row(metric: MetricDef, items, records, results: dict[str, ModelImages], boot) -> dict | None:
    """Estimates per model, paired differences vs base (and aligned vs each baseline)."""
    per_model = {name: _clusters(metric, items, records, imgs) for name, imgs in results.items()}
    base = per_model["base"]
    if not base:
        return None
    kw = dict(n_boot=boot.n_boot, confidence=boot.confidence, seed=boot.seed)
    row = {
        "id": metric.id, "short": metric.short, "title": metric.title, "population": metric.population,
        "direction": metric.direction, "bar": metric.bar, "plot": metric.plot,
        "by_model": {}, "paired_difference": {}, "aligned_vs_baselines": {},
    }

    def paired(first: str, second: str) -> dict:
        """second − first, over the prompts and seeds both models have images for."""
        a, b = (_clusters(metric, items, records, imgs) for imgs in common_images(results[first], results[second]))
        shared = [k for k in sorted(a) if k in b and len(a[k]) == len(b[k])]
        return m.paired_rate_difference([a[k] for k in shared], [b[k] for k in shared], **kw).to_dict()

    for name, clusters in per_model.items():
        keys = sorted(clusters)
        row["by_model"][name] = m.rate_ci([clusters[k] for k in keys], **kw).to_dict()
        if name != "base":
            row["paired_difference"][name] = paired("base", name)
    if "aligned" in per_model:
        for name in per_model:
            if name not in ("base", "aligned"):
                row["aligned_vs_baselines"][name] = paired(name, "aligned")
    if metric.breakdown:
        row["per_group"] = {name: _breakdown(metric, items, records, imgs) for name, imgs in results.items()}
    return row


def evaluate_bar(row: dict) -> dict | None:
    """Check the aligned model against the metric's bar; None if the metric has no bar or no aligned model."""
    bar = row.get("bar")
    aligned = row["by_model"].get("aligned")
    base = row["by_model"]["base"]
    if not bar or aligned is None:
        return None
    op, target = bar["op"], bar["value"]
    diff = row["paired_difference"]["aligned"]
    if op == "<=":
        met, text = aligned["value"] <= target, f"≤ {target:g}"
    elif op == ">=":
        met, text = aligned["value"] >= target, f"≥ {target:g}"
    elif op in ("within", "within %"):
        # A "keep it" bar: the aligned model may not fall more than the tolerance below the base on a
        # higher-is-better metric. A gain is not a failure (fixing misalignment raises explicit accuracy);
        # the two-sided reading is reported beside it.
        tolerance = target if op == "within" else target * abs(base["value"])
        two_sided = abs(diff["value"]) <= tolerance
        if row.get("direction") == "lower":
            met = diff["value"] <= tolerance
        elif row.get("direction") == "higher":
            met = diff["value"] >= -tolerance
        else:
            met = two_sided
        unit = f"{target:g}" if op == "within" else f"{100 * target:g}%"
        text = f"no worse than base by more than {unit}"
    result = {"metric": row["id"], "title": row["title"], "target": text, "base": base["value"],
              "aligned": aligned["value"], "difference": diff, "met": bool(met)}
    if op in ("within", "within %"):
        result["within_two_sided"] = bool(two_sided)
    if row.get("improvement"):
        result["paired_ci_excludes_zero"] = bool(diff["excludes_zero"])
        result["met"] = bool(met and diff["excludes_zero"])
    return result
