"""Measure a prompt filter: recall on prompts it must block and false positives on benign prompts, each as
written and under seeded obfuscations (:mod:`mitigations.obfuscate`).

The prompts come from the caller (``{split: {family: [prompt, ...]}}`` for the prompts to block and for the
benign ones), so nothing here knows where they were written. Every obfuscation variant is applied in two
modes: to every word of the prompt, and to the ``targets`` words only (the words an evader would hide), when
targets are given.

From prompt files (one prompt per line, ``#`` starts a comment; each file is a family named after it)::

    python -m mitigations.filter_eval --config configs/filters/sd15.yaml --block unsafe.txt --benign benign.txt

The synthetic world's entry point, with its eval splits, is ``python -m synthetic_world.filter_eval``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from core.cli import run_main
from core.errors import DataError
from core.io import atomic_write_json
from mitigations.config import load_mitigation_config
from mitigations.filter import PromptFilter, PromptFilterConfig
from mitigations.obfuscate import check_transforms, obfuscate


@dataclass(frozen=True)
class Variant:
    """A named obfuscation of the measured prompts; no transforms = the prompts as written."""

    name: str
    transforms: tuple[str, ...] = ()


CLEAN = Variant("clean")
DEFAULT_VARIANTS = (
    CLEAN,
    Variant("leetspeak", ("leetspeak",)),
    Variant("homoglyph", ("homoglyph",)),
    Variant("zero_width", ("zero_width",)),
    Variant("spacing", ("spacing",)),
    Variant("punctuation", ("punctuation",)),
    Variant("case", ("case",)),
    Variant("repeat", ("repeat",)),
    Variant("leetspeak+case", ("leetspeak", "case")),
    Variant("homoglyph+zero_width", ("homoglyph", "zero_width")),
    Variant("spacing+leetspeak", ("spacing", "leetspeak")),
    Variant("punctuation+homoglyph+repeat", ("punctuation", "homoglyph", "repeat")),
    Variant("all", ("repeat", "leetspeak", "homoglyph", "case", "spacing", "punctuation", "zero_width")),
)
MODES = ("every_word", "target_words")
EXAMPLES = 5  # misses / false positives kept per cell, for reading


def _variants_of(prompts: Sequence[str], variant: Variant, rate: float, seed: int, targets: Sequence[str]) -> list[str]:
    if not variant.transforms:
        return list(prompts)
    return [obfuscate(p, variant.transforms, rate, targets, seed) for p in prompts]


def _rate_cell(flt: PromptFilter, by_family: Mapping[str, Sequence[str]], blocked_is_right: bool) -> dict[str, Any]:
    """Share of prompts blocked, overall and per family, with a few examples of the wrong decisions."""
    total = hits = 0
    families, examples = {}, []
    for family, prompts in by_family.items():
        decisions = flt.check_batch(prompts)
        blocked = sum(d.blocked for d in decisions)
        families[family] = {"n": len(prompts), "blocked": blocked, "rate": blocked / len(prompts) if prompts else 0.0}
        total, hits = total + len(prompts), hits + blocked
        for d in decisions:
            if d.blocked != blocked_is_right and len(examples) < EXAMPLES:
                examples.append({"family": family, "prompt": d.prompt, "reason": d.reason()})
    return {"n": total, "blocked": hits, "rate": hits / total if total else 0.0, "by_family": families,
            "examples": examples}


def measure_filter(flt: PromptFilter, block: Mapping[str, Mapping[str, Sequence[str]]],
                   benign: Mapping[str, Mapping[str, Sequence[str]]], variants: Sequence[Variant] = DEFAULT_VARIANTS,
                   rate: float = 0.5, seed: int = 0, targets: Sequence[str] = ()) -> dict[str, Any]:
    """Recall on ``block`` and false-positive rate on ``benign`` (each ``{split: {family: prompts}}``) for every
    variant, mode (every word; only ``targets`` words, when given) and split.

    The result's ``splits[split]`` holds ``recall`` and ``false_positive``, each ``{mode: {variant: cell}}``
    (a cell: n, blocked, rate, by_family, examples), and ``summary``: the clean recall and false-positive rate,
    and pooled over every obfuscated variant and mode, the recall, the lowest variant recall and the
    false-positive rate."""
    for variant in variants:
        if variant.transforms:
            check_transforms(variant.transforms)
    for name, sets in (("block", block), ("benign", benign)):
        if not sets or not all(any(prompts for prompts in families.values()) for families in sets.values()):
            raise DataError(f"measure_filter: every split of {name} needs prompts")
    modes = ["every_word"] + (["target_words"] if targets else [])
    splits = {}
    for split in block:
        recall: dict[str, dict[str, Any]] = {}
        false_positive: dict[str, dict[str, Any]] = {}
        for mode in modes:
            words = targets if mode == "target_words" else ()
            recall[mode], false_positive[mode] = {}, {}
            for variant in variants:
                if mode == "target_words" and not variant.transforms:
                    continue  # clean prompts are the same in both modes
                obfuscated = {f: _variants_of(p, variant, rate, seed, words) for f, p in block[split].items()}
                recall[mode][variant.name] = _rate_cell(flt, obfuscated, blocked_is_right=True)
                obfuscated = {f: _variants_of(p, variant, rate, seed, words) for f, p in benign.get(split, {}).items()}
                if obfuscated:
                    false_positive[mode][variant.name] = _rate_cell(flt, obfuscated, blocked_is_right=False)
        splits[split] = {"recall": recall, "false_positive": false_positive,
                         "summary": _summary(recall, false_positive)}
    return {"rate": rate, "seed": seed, "targets": list(targets), "modes": modes,
            "variants": [{"name": v.name, "transforms": list(v.transforms)} for v in variants], "splits": splits}


def _pooled(cells: list[dict[str, Any]]) -> float | None:
    n = sum(c["n"] for c in cells)
    return sum(c["blocked"] for c in cells) / n if n else None


def _summary(recall: dict, false_positive: dict) -> dict[str, Any]:
    obfuscated = [c for mode in recall.values() for name, c in mode.items() if name != CLEAN.name]
    obfuscated_fp = [c for mode in false_positive.values() for name, c in mode.items() if name != CLEAN.name]
    clean_recall = recall["every_word"].get(CLEAN.name)
    clean_fp = false_positive["every_word"].get(CLEAN.name)
    return {
        "clean_recall": clean_recall["rate"] if clean_recall else None,
        "clean_false_positive": clean_fp["rate"] if clean_fp else None,
        "obfuscated_recall": _pooled(obfuscated),
        "lowest_variant_recall": min((c["rate"] for c in obfuscated), default=None),
        "obfuscated_false_positive": _pooled(obfuscated_fp),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def markdown_report(report: dict[str, Any]) -> str:
    """The measurement as Markdown tables: a summary per split, then recall and false positives per variant."""
    splits = list(report["splits"])
    lines = ["| split | recall, as written | recall, obfuscated (pooled) | lowest variant | false positives, as written "
             "| false positives, obfuscated |", "|---|---|---|---|---|---|"]
    for split in splits:
        s = report["splits"][split]["summary"]
        lines.append(f"| {split} | {_pct(s['clean_recall'])} | {_pct(s['obfuscated_recall'])} | "
                     f"{_pct(s['lowest_variant_recall'])} | {_pct(s['clean_false_positive'])} | "
                     f"{_pct(s['obfuscated_false_positive'])} |")
    for mode in report["modes"]:
        header = "| variant | " + " | ".join(f"recall {s} | FP {s}" for s in splits) + " |"
        lines += ["", f"Obfuscation of {'every word' if mode == 'every_word' else 'the target words only'} "
                      f"(rate {report['rate']}, seed {report['seed']}):", "", header,
                  "|---|" + "---|" * (2 * len(splits))]
        for variant in report["variants"]:
            cells = []
            for split in splits:
                recall = report["splits"][split]["recall"][mode].get(variant["name"])
                fp = report["splits"][split]["false_positive"][mode].get(variant["name"])
                cells += [_pct(recall["rate"]) if recall else "", _pct(fp["rate"]) if fp else ""]
            if any(cells):
                lines.append(f"| {variant['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_prompt_file(path: str | Path) -> list[str]:
    """The prompts of a UTF-8 file, one per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"prompt file {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"prompt file {path} is not UTF-8 text: {exc}") from exc
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise DataError(f"prompt file {path} has no prompts")
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mitigations.filter_eval",
                                     description="Recall and false positives of a prompt filter on prompt files, "
                                                 "as written and obfuscated.")
    parser.add_argument("--config", required=True, help="YAML file with a prompt_filter: section")
    parser.add_argument("--block", nargs="+", required=True, metavar="FILE", help="prompts the filter must block")
    parser.add_argument("--benign", nargs="+", required=True, metavar="FILE", help="prompts it must let through")
    parser.add_argument("--targets", nargs="*", default=[], metavar="WORD",
                        help="words an evader would hide: also measure obfuscating only these")
    parser.add_argument("--rate", type=float, default=0.5, help="obfuscation probability per letter, gap or word")
    parser.add_argument("--seed", type=int, default=0, help="obfuscation seed")
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the prompt_filter: section")
    args = parser.parse_args(argv)

    def work() -> None:
        config = load_mitigation_config(PromptFilterConfig, args.config, "prompt_filter", args.overrides)
        block = {"files": {Path(p).stem: read_prompt_file(p) for p in args.block}}
        benign = {"files": {Path(p).stem: read_prompt_file(p) for p in args.benign}}
        report = measure_filter(PromptFilter(config), block, benign, rate=args.rate, seed=args.seed,
                                targets=args.targets)
        if args.out:
            atomic_write_json(args.out, report)
        print(markdown_report(report))

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
