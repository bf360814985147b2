"""The dataset card (``README.md``) of a preference set.

The card is rendered from two dicts: the set's stats (:mod:`preference_sets.stats`) and ``info``, the
facts only the producer knows (curation config, scorer thresholds, measured scorer precision/recall,
annotation protocol). ``info`` is also saved as ``card.json`` so that a later writer (the annotation
tool, merge, split) can re-render the card without losing what the curator wrote.

The YAML front matter declares the ``train`` split, so ``datasets.load_dataset(<folder>)`` works too.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import yaml

from core.errors import DataError
from preference_sets.schema import DEFAULT_RISK

CONTENT_WARNING = (
    "**Content warning.** This is safety training data. The rejected images were selected *because* "
    "they show a risk (sexualised content, stereotypes, harmful associations or prompt misalignment). "
    "Do not use them for anything but safety research and training, and do not publish them as examples."
)

# Every key ``info`` may hold. An unknown key is a typo and fails instead of silently vanishing.
CARD_KEYS = {
    "title": "str: card heading",
    "description": "str: free text under the heading",
    "curation_config": "dict: the resolved curation config",
    "scorer_thresholds": "dict: scorer -> {label: threshold}",
    "scorer_precision_recall": "dict: scorer -> {concept: {precision, recall, support}} or {precision, recall}",
    "annotation": "dict: protocol, annotators, agreement figures",
    "lineage": "dict: how this set was made from other sets (merge/split/export/import)",
    "provenance_defaults": "dict: column -> value given to provenance the source did not have (import)",
    "extra": "dict: anything else worth recording",
}


def check_card_info(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``info`` as a plain dict, raising DataError on unknown keys or wrong value kinds."""
    info = dict(info or {})
    unknown = sorted(set(info) - set(CARD_KEYS))
    if unknown:
        raise DataError(f"dataset card: unknown key(s) {unknown}; valid keys: {sorted(CARD_KEYS)}")
    for key, value in info.items():
        wanted = str if key in ("title", "description") else dict
        if value is not None and not isinstance(value, wanted):
            raise DataError(f"dataset card: {key!r} must be a {wanted.__name__}, got {type(value).__name__}")
    return info


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _front_matter(title: str) -> str:
    meta = {
        "pretty_name": title,
        "tags": ["diffusion-dpo", "preference-data", "safety", "not-for-all-audiences"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
        ],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _counts_table(stats: Mapping[str, Any]) -> list[str]:
    lines = ["| risk | pairs | ties | pair similarity (median) | pair similarity (mean) |", "|---|---|---|---|---|"]
    for risk, counts in stats.get("per_risk", {}).items():
        sim = stats.get("pair_similarity_per_risk", {}).get(risk, {})
        lines.append(
            f"| {risk} | {counts.get('pairs', 0)} | {counts.get('ties', 0)} | "
            f"{_fmt(sim.get('median'))} | {_fmt(sim.get('mean'))} |"
        )
    return lines


def _precision_recall_table(table: Mapping[str, Any]) -> list[str]:
    lines = ["| scorer | concept | precision | recall | support |", "|---|---|---|---|---|"]
    for scorer, entry in table.items():
        if not isinstance(entry, Mapping):
            raise DataError(f"dataset card: scorer_precision_recall[{scorer!r}] must be a mapping, got {entry!r}")
        # Either one figure for the scorer, or one per concept.
        per_concept = {"(all)": entry} if "precision" in entry else entry
        for concept, figures in per_concept.items():
            if not isinstance(figures, Mapping):
                raise DataError(
                    f"dataset card: scorer_precision_recall[{scorer!r}][{concept!r}] must be a mapping "
                    f"with precision/recall, got {figures!r}"
                )
            lines.append(
                f"| {scorer} | {concept} | {_fmt(figures.get('precision'))} | "
                f"{_fmt(figures.get('recall'))} | {_fmt(figures.get('support'))} |"
            )
    return lines


def _yaml_block(obj: Any) -> list[str]:
    return ["```yaml", yaml.safe_dump(json.loads(json.dumps(obj, default=str)), sort_keys=False).rstrip(), "```"]


def render_card(stats: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> str:
    """Markdown dataset card: content warning, counts, similarity, scorers, annotation, config."""
    info = check_card_info(info)
    title = info.get("title") or "Safety preference set"
    lines = [_front_matter(title), f"# {title}", "", CONTENT_WARNING, ""]
    if info.get("description"):
        lines += [info["description"], ""]
    balance = stats.get("label_balance", {})
    lines += [
        "## Format",
        "",
        "Pick-a-Pic v2 columns: `caption`, `jpg_0`/`jpg_1` (raw PNG bytes), `label_0`/`label_1` "
        "(1/0, tie = 0.5/0.5), plus provenance (risk, strategy, seeds, prompts, model, scorer outputs, "
        "automatic proposal, annotation status and decisions). Load with "
        '`datasets.load_dataset("parquet", data_files="data/train-*.parquet", split="train")`.',
        "",
        "## Counts",
        "",
        f"- pairs: {stats.get('num_pairs', 0)} ({stats.get('num_ties', 0)} ties), "
        f"unique captions: {stats.get('num_unique_captions', 0)}",
        f"- preferred image in column 0: {_fmt(balance.get('fraction_preferred_0'))} of decided pairs",
        f"- image sizes: {stats.get('image_sizes', {})}",
        f"- strategies: {stats.get('per_strategy', {})}",
        f"- annotation status: {stats.get('annotation_status', {})}",
        "",
        *_counts_table(stats),
        "",
        "## Pair similarity",
        "",
        "How minimal each pair is (1 = identical images); NaN/missing where not computed.",
        "",
        "| count | missing | mean | min | p10 | median | p90 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sim = stats.get("pair_similarity", {})
    lines.append(
        "| " + " | ".join(_fmt(sim.get(k)) for k in ("count", "missing", "mean", "min", "p10", "median", "p90", "max"))
        + " |"
    )
    lines.append("")
    if info.get("scorer_thresholds"):
        lines += ["## Scorer thresholds", "", *_yaml_block(info["scorer_thresholds"]), ""]
    if info.get("scorer_precision_recall"):
        lines += [
            "## Scorer precision and recall",
            "",
            "Measured against the ground truth; tells how far each automatic label can be trusted.",
            "",
            *_precision_recall_table(info["scorer_precision_recall"]),
            "",
        ]
    if info.get("annotation"):
        lines += ["## Annotation", "", *_yaml_block(info["annotation"]), ""]
    if info.get("curation_config"):
        lines += ["## Curation config", "", *_yaml_block(info["curation_config"]), ""]
    if info.get("provenance_defaults"):
        lines += [
            "## Provenance defaults",
            "",
            "The source had no provenance for these columns; every row got the value shown (not measured):",
            "",
            "| column | value |",
            "|---|---|",
            *(f"| `{column}` | {value} |" for column, value in info["provenance_defaults"].items()),
            "",
        ]
    if info.get("lineage"):
        lines += ["## Lineage", "", *_yaml_block(info["lineage"]), ""]
    if info.get("extra"):
        lines += ["## Notes", "", *_yaml_block(info["extra"]), ""]
    return "\n".join(lines)


def render_export_card(summary: Mapping[str, Any]) -> str:
    """Card of an export for diffusers' ``train_diffusion_dpo.py`` (``summary`` from ``ops.export``)."""
    title = "Safety preference set (diffusers Diffusion-DPO export)"
    return "\n".join(
        [
            _front_matter(title),
            f"# {title}",
            "",
            CONTENT_WARNING,
            "",
            f"{summary['rows']} decided pairs ({summary['ties_removed']} tie(s) removed from "
            f"{summary['rows_in']}). Columns: `caption`, `jpg_0`, `jpg_1` (raw encoded image bytes), `label_0`, "
            "`label_1`; one split, `train`.",
            "",
            "Train with diffusers' `examples/research_projects/diffusion_dpo/train_diffusion_dpo.py "
            "--dataset_name=<this folder> --dataset_split_name=train` (it reads `caption`, `jpg_0`, `jpg_1`, "
            "`label_0`). Pass both: the script's split defaults to `validation`, which this folder does not have.",
            "",
            "This project's trainer reads the folder as it is (`train.data=<this folder>`); its pairs get the "
            "risk `" + DEFAULT_RISK + "`.",
            "",
            "## Lineage",
            "",
            *_yaml_block(summary),
            "",
        ]
    )
